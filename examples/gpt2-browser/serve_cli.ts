// `npm run example:browser`: serves the page on PORT (default 8000) until stopped.
import { serveExample } from './serve';

const port = Number(process.env.PORT ?? 8000);
serveExample(port).then(server => {
  console.log(`GPT-2 browser example: open ${server.url} in a browser with WebGPU (Chrome, Edge) or WebGL2. Ctrl-C stops.`);
}, error => {
  console.error(error);
  process.exit(1);
});
