// Serves a page bundle on loopback, opens it in headless Chromium and prints every line the page
// POSTs to /result until it posts DONE (unlike ../shared/gpu/serve-page.mjs, which stops at the first
// POST). Usage: node webgl_serve.mjs page.js /path/to/chromium [chromium flags...]; HASH=quick etc.
// At the end (DONE or the LIMIT_S timeout) it prints the result rows as a markdown table, and when
// $OUT is set writes them there too: webgl_bench.json (rows and comment lines) and webgl_bench.md.
import http from 'node:http'; import fs from 'node:fs'; import path from 'node:path'; import { spawn } from 'node:child_process';
const [page, chrome, ...flags] = process.argv.slice(2);
const bundle = fs.readFileSync(page, 'utf8');
const limit = Number(process.env.LIMIT_S ?? 540) * 1000;
const rows = [];
const comments = [];
let child;

const fmt = (x, digits) => (x === undefined ? '–' : x >= 1 ? x.toFixed(digits) : x.toPrecision(2));

/** One table row per (N, pass, implementation): median ms per call, its range, host ms, speed over naive. */
function table() {
  const lines = [
    '| N | pass | impl | ms per call (median) | min–max over rounds | host ms per call | rounds × calls | TFLOP/s | speed / naive (median of rounds) | peak MiB |',
    '|---|---|---|---|---|---|---|---|---|---|',
  ];
  for (const r of rows) {
    if (r.error) {
      lines.push(`| ${r.n} | ${r.pass} | ${r.impl} | error: ${r.error.slice(0, 80)} | | | | | | |`);
      continue;
    }
    const speed = r.speedup === undefined ? '–' : `${r.speedup.toFixed(2)}×`;
    lines.push(`| ${r.n} | ${r.pass} | ${r.impl} | ${fmt(r.ms, 2)} | ${fmt(r.msMin, 2)}–${fmt(r.msMax, 2)} | ${fmt(r.hostMs, 2)} | ` +
      `${r.rounds} × ${r.callsPerSample} | ${fmt(r.tflops, 3)} | ${speed} | ${fmt(r.peakMiB, 1)} |`);
  }
  return lines.join('\n');
}

function finish(code) {
  const md = table();
  console.log(`\n${md}`);
  if (process.env.OUT) {
    fs.mkdirSync(process.env.OUT, { recursive: true });
    fs.writeFileSync(path.join(process.env.OUT, 'webgl_bench.json'), JSON.stringify({ comments, rows }, null, 1));
    fs.writeFileSync(path.join(process.env.OUT, 'webgl_bench.md'), `${comments.join('\n')}\n\n${md}\n`);
  }
  child?.kill('SIGKILL');
  process.exit(code);
}

const timer = setTimeout(() => { console.log('TIMEOUT'); comments.push(`# TIMEOUT after ${limit / 1000} s`); finish(2); }, limit);
const srv = http.createServer((q, r) => {
  if (q.method === 'POST') {
    let b = ''; q.on('data', d => { b += d; });
    q.on('end', () => {
      r.end('ok');
      console.log(b);
      if (b === 'DONE') { clearTimeout(timer); srv.close(); finish(0); }
      if (b.startsWith('{')) rows.push(JSON.parse(b)); else comments.push(b);
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
  child.stderr.on('data', d => { const s = String(d); if (/error|fail|lost/i.test(s) && !/dbus|Fontconfig|XDG|crashpad|gcm|GCM|on_device_model/i.test(s)) process.stderr.write(s.slice(0, 300)); });
});
