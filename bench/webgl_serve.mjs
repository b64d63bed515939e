// Serves a page bundle on loopback, opens it in headless Chromium and prints every line the page
// POSTs to /result until it posts DONE (unlike ../shared/gpu/serve-page.mjs, which stops at the first
// POST). Usage: node webgl_serve.mjs page.js /path/to/chromium [chromium flags...]; HASH=quick etc.
import http from 'node:http'; import fs from 'node:fs'; import { spawn } from 'node:child_process';
const [page, chrome, ...flags] = process.argv.slice(2);
const bundle = fs.readFileSync(page, 'utf8');
const limit = Number(process.env.LIMIT_S ?? 540) * 1000;
let child;
const timer = setTimeout(() => { console.log('TIMEOUT'); child?.kill('SIGKILL'); process.exit(2); }, limit);
const srv = http.createServer((q, r) => {
  if (q.method === 'POST') {
    let b = ''; q.on('data', d => { b += d; });
    q.on('end', () => {
      r.end('ok');
      console.log(b);
      if (b === 'DONE') { clearTimeout(timer); child.kill('SIGKILL'); srv.close(); process.exit(0); }
    });
    return;
  }
  r.setHeader('content-type', 'text/html');
  r.end(`<html><body><script>${bundle.replace(/<\/script/g, '<\\/script')}</script></body></html>`);
}).listen(0, '127.0.0.1', () => {
  const url = `http://127.0.0.1:${srv.address().port}/#${process.env.HASH ?? ''}`;
  child = spawn(chrome, [...flags, '--no-sandbox', '--headless=new', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--no-first-run', `--user-data-dir=/tmp/chr-profile-${Date.now()}`, url],
  { stdio: ['ignore', 'ignore', 'pipe'] });
  child.stderr.on('data', d => { const s = String(d); if (/error|fail|lost/i.test(s) && !/dbus|Fontconfig|XDG|crashpad|gcm|GCM/i.test(s)) process.stderr.write(s.slice(0, 300)); });
});
