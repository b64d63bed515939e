// `npm start`: trains a small GPT-2 on Moby-Dick with flash attention on the best backend Node has,
// then samples text and measures the same model with naive attention. `--help` lists the flags.
import { parseArgs } from 'util';
import * as tf from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';
import { SingleBar } from 'cli-progress';
import { BackendChoice, isBackendRequest, selectBackend } from './backend';
import { directoryHandler } from './checkpoint';
import { CORPUS_SOURCE } from './corpus';
import { readMobyDick } from './corpus_node';
import { seededRandom, TokenDataset } from './dataset';
import { Attention, buildModel, isAttention, ModelOptions } from './model';
import { isTokenizerKind, Tokenizer, tokenizerFor, tokenizerFromSpec, TokenizerSpec } from './tokenizer';
import { generate, measureTokensPerSecond, scheduledLearningRate, Trainer, validationLoss } from './training';

const WARMUP_STEPS = 5;

const USAGE = `Trains a GPT-2 on Moby-Dick with flash attention, then compares naive attention.

  --preset NAME       model size preset of gpt2() (default tiny)
  --layers N          transformer blocks, overriding the preset's (default: 1 with the tiny
                      preset, which learns fastest on a CPU; the preset's otherwise)
  --channels N        width, overriding the preset's (default: 32 with the tiny preset, for the
                      same reason; the preset's otherwise)
  --context N         tokens per sequence (default 64)
  --batch N           sequences per step (default 16)
  --steps N           training steps (default: as many as fit in --minutes)
  --minutes X         training time when --steps is not given (default 2.5)
  --lr X              peak Adam learning rate (default 2e-2): ${WARMUP_STEPS} warm-up steps, then cosine
                      decay to a tenth of it over the steps or minutes of the run
  --tokenizer KIND    char | bpe (GPT-2 BPE, vocabulary compacted to the book's tokens) |
                      bpe-full (all 50257 GPT-2 tokens) (default char)
  --backend NAME      auto | webgpu | cpu (default auto: GPU, else SwiftShader, else cpu)
  --attention KIND    flash | naive: the model that trains (default flash)
  --compare-steps N   timed steps of each attention after training, in turns, 0 to skip (default 3)
  --sample N          tokens to generate at the end (default 200)
  --save DIR          write the trained model to DIR (model.json + weights.bin)
  --load DIR          start from a model saved with --save (its preset, context, tokenizer)
  --seed N            data order and sampling seed (default 1)
`;

interface Metadata {
  preset: string;
  /** Blocks when they differ from the preset's. */
  layers?: number;
  /** Width when it differs from the preset's. */
  channels?: number;
  context: number;
  attention: Attention;
  tokenizer: TokenizerSpec;
}

function parseFlags() {
  const { values } = parseArgs({
    options: {
      preset: { type: 'string', default: 'tiny' },
      layers: { type: 'string' },
      channels: { type: 'string' },
      context: { type: 'string', default: '64' },
      batch: { type: 'string', default: '16' },
      steps: { type: 'string' },
      minutes: { type: 'string', default: '2.5' },
      lr: { type: 'string', default: '2e-2' },
      tokenizer: { type: 'string', default: 'char' },
      backend: { type: 'string', default: 'auto' },
      attention: { type: 'string', default: 'flash' },
      'compare-steps': { type: 'string', default: '3' },
      sample: { type: 'string', default: '200' },
      save: { type: 'string' },
      load: { type: 'string' },
      seed: { type: 'string', default: '1' },
      help: { type: 'boolean', default: false },
    },
  });
  const int = (name: string, s: string, min: number): number => {
    const n = Number(s);
    if (!Number.isInteger(n) || n < min) throw new Error(`--${name} must be an integer ≥ ${min}, got ${s}`);
    return n;
  };
  const { tokenizer, backend, attention } = values;
  if (!isTokenizerKind(tokenizer)) throw new Error(`--tokenizer must be char, bpe or bpe-full, got ${tokenizer}`);
  if (!isBackendRequest(backend)) throw new Error(`--backend must be auto, webgpu or cpu, got ${backend}`);
  if (!isAttention(attention)) throw new Error(`--attention must be flash or naive, got ${attention}`);
  const lr = Number(values.lr);
  const minutes = Number(values.minutes);
  if (!(minutes > 0)) throw new Error(`--minutes must be a positive number, got ${values.minutes}`);
  if (!(lr > 0)) throw new Error(`--lr must be a positive number, got ${values.lr}`);
  return {
    help: values.help,
    preset: values.preset,
    layers: values.layers === undefined ? (values.preset === 'tiny' ? 1 : undefined) : int('layers', values.layers, 1),
    channels: values.channels === undefined ? (values.preset === 'tiny' ? 32 : undefined) : int('channels', values.channels, 1),
    context: int('context', values.context, 1),
    batch: int('batch', values.batch, 1),
    steps: values.steps === undefined ? undefined : int('steps', values.steps, 0),
    minutes,
    lr,
    tokenizer,
    backend,
    attention,
    compareSteps: int('compare-steps', values['compare-steps'], 0),
    sample: int('sample', values.sample, 0),
    save: values.save,
    load: values.load,
    seed: int('seed', values.seed, 0),
  };
}

type Flags = ReturnType<typeof parseFlags>;

async function loadOrBuild(flags: Flags, text: string): Promise<{ model: tfl.LayersModel; tokenizer: Tokenizer; meta: Metadata }> {
  if (flags.load) {
    const model = await tfl.loadLayersModel(directoryHandler(flags.load));
    const meta = model.getUserDefinedMetadata() as Metadata | undefined;
    if (!meta?.tokenizer) throw new Error(`${flags.load} has no tokenizer metadata: was it saved by this example?`);
    return { model, tokenizer: tokenizerFromSpec(meta.tokenizer), meta };
  }
  const tokenizer = tokenizerFor(flags.tokenizer, text);
  const meta: Metadata = {
    preset: flags.preset, layers: flags.layers, channels: flags.channels, context: flags.context, attention: flags.attention,
    tokenizer: tokenizer.spec(),
  };
  return { model: buildModel(modelOptions(meta, tokenizer, flags.attention)), tokenizer, meta };
}

// A character vocabulary is tiny, so a separate output matrix costs a few thousand weights, and it
// learns bigram statistics within the first steps: a head tied to the input embedding first has to
// unlearn predicting the input character (measured: loss 2.83 vs 3.05 after 60 steps).
function modelOptions(meta: Metadata, tokenizer: Tokenizer, attention: Attention): ModelOptions {
  return {
    preset: meta.preset, layers: meta.layers, channels: meta.channels, vocabSize: tokenizer.vocabSize, context: meta.context,
    attention,
    tiedEmbeddings: tokenizer.kind !== 'char',
  };
}

function formatSeconds(ms: number): string {
  const s = Math.round(ms / 1000);
  return s >= 60 ? `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s` : `${s}s`;
}

interface TrainingRun {
  steps: number;
  firstLoss: number;
  lastLoss: number;
  /** Over the steps after the first two, which compile the GPU programs; 0 if there were none. */
  tokensPerSecond: number;
}

async function train(trainer: Trainer, dataset: TokenDataset, flags: Flags, context: number): Promise<TrainingRun> {
  const budgetMs = flags.minutes * 60_000;
  const bySteps = flags.steps !== undefined;
  const total = flags.steps ?? Math.round(budgetMs / 1000);
  const run: TrainingRun = { steps: 0, firstLoss: NaN, lastLoss: NaN, tokensPerSecond: 0 };
  if (total === 0) return run;
  const bar = new SingleBar({
    format: `training |{bar}| ${bySteps ? '{value}/{total} steps' : '{value}/{total} s, step {step}'}` +
      ' | loss {loss} | {speed} tokens/s',
    noTTYOutput: true,
    notTTYSchedule: 10_000,
    hideCursor: true,
  });
  bar.start(total, 0, { loss: '-', speed: '-', step: 0 });
  const started = performance.now();
  let timedTokens = 0;
  let timedMs = 0;
  try {
    while (bySteps ? run.steps < total : performance.now() - started < budgetMs) {
      const progress = bySteps ? run.steps / total : (performance.now() - started) / budgetMs;
      trainer.setLearningRate(scheduledLearningRate(flags.lr, run.steps, WARMUP_STEPS, progress));
      const batch = dataset.batch(flags.batch, context);
      const result = await trainer.step(batch);
      tf.dispose([batch.x, batch.y]);
      if (!Number.isFinite(result.loss)) throw new Error(`loss became ${result.loss} at step ${run.steps}`);
      if (run.steps === 0) run.firstLoss = result.loss;
      run.lastLoss = result.loss;
      if (run.steps >= 2) {
        timedTokens += result.tokens;
        timedMs += result.milliseconds;
      }
      run.steps++;
      const speed = timedMs > 0 ? timedTokens / (timedMs / 1000) : result.tokens / (result.milliseconds / 1000);
      const value = bySteps ? run.steps : Math.min(total, Math.round((performance.now() - started) / 1000));
      bar.update(value, { loss: result.loss.toFixed(3), speed: speed.toFixed(0), step: run.steps });
    }
  } finally {
    bar.stop();
  }
  run.tokensPerSecond = timedMs > 0 ? timedTokens / (timedMs / 1000) : 0;
  return run;
}

async function main(): Promise<void> {
  const flags = parseFlags();
  if (flags.help) {
    process.stdout.write(USAGE);
    return;
  }
  const started = performance.now();
  const backend: BackendChoice = await selectBackend(flags.backend);
  console.log(`backend: ${backend.description}`);

  const text = readMobyDick();
  const { model, tokenizer, meta } = await loadOrBuild(flags, text);
  const context = meta.context;
  const tokens = tokenizer.encode(text);
  const dataset = new TokenDataset(tokens, 0.05, flags.seed);
  console.log(`corpus: ${CORPUS_SOURCE}: ${text.length.toLocaleString()} characters, ` +
    `${tokens.length.toLocaleString()} ${tokenizer.kind} tokens, vocabulary ${tokenizer.vocabSize}`);
  console.log(`model: gpt2 preset '${meta.preset}'${flags.load ? ` loaded from ${flags.load}` : ''}, ` +
    `${meta.layers === undefined ? '' : `${meta.layers} block(s), `}${meta.channels === undefined ? '' : `${meta.channels} channels, `}` +
    `${model.countParams().toLocaleString()} parameters, context ${context}, ${meta.attention} attention, ` +
    `batch ${flags.batch}`);

  const trainer = new Trainer(model, tokenizer.vocabSize, flags.lr);
  const run = await train(trainer, dataset, flags, context);
  const random = seededRandom(flags.seed);
  if (run.steps > 0) {
    const valLoss = await validationLoss(model, dataset, tokenizer.vocabSize, flags.batch, context, 4);
    console.log(`loss ${run.firstLoss.toFixed(3)} → ${run.lastLoss.toFixed(3)} in ${run.steps} steps ` +
      `(validation ${valLoss.toFixed(3)}; uniform guess ${Math.log(tokenizer.vocabSize).toFixed(3)})`);
  }
  if (flags.save) {
    model.setUserDefinedMetadata(meta);
    await model.save(directoryHandler(flags.save));
    console.log(`saved to ${flags.save}`);
  }
  if (flags.sample > 0) {
    const sample = await generate(model, tokenizer, 'Call me Ishmael.', flags.sample,
      { context, temperature: 0.8, topK: 40, random });
    console.log(`\nsample:\n${sample}\n`);
  }

  if (flags.compareSteps > 0 && run.steps > 0) {
    // Copies of the trained weights with each attention, timed in turns on the same batches: the
    // training run's own tokens/s spans minutes of a machine whose load may change.
    const twins = (['flash', 'naive'] as const).map(attention => {
      const twin = buildModel(modelOptions(meta, tokenizer, attention));
      twin.setWeights(model.getWeights());
      return { twin, trainer: new Trainer(twin, tokenizer.vocabSize, flags.lr) };
    });
    const [flash, naive] = await measureTokensPerSecond(twins.map(t => t.trainer), dataset, flags.batch, context, 1,
      flags.compareSteps);
    for (const { twin, trainer: twinTrainer } of twins) {
      twinTrainer.dispose();
      twin.dispose();
    }
    console.log(`training speed on ${backend.name}, batch ${flags.batch} × context ${context} ` +
      `(copies of the trained model, ${flags.compareSteps} steps each after 1 warm-up, in turns):`);
    console.log(`  flash attention: ${flash.toFixed(0)} tokens/s`);
    console.log(`  naive attention: ${naive.toFixed(0)} tokens/s`);
    console.log(`  speed-up: ${(flash / naive).toFixed(2)}×`);
  }
  trainer.dispose();
  console.log(`done in ${formatSeconds(performance.now() - started)}`);
}

main().catch(error => {
  console.error(error instanceof Error ? error.message : error);
  process.exit(1);
});
