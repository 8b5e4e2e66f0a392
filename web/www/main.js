// The page's side of Lamina in the browser: picks the file, copies it into
// wasm memory slice by slice, and runs the generation loop one awaited step
// at a time, so each token shows as it is sampled. The engine is
// web/src/lib.rs, built by scripts/web.sh into pkg/.
//
// window.lamina is the page's state, which the headless browser test
// (tests/tests/browser.rs) reads: state is one of starting, no-webgpu, idle,
// loading, ready, generating, done, error.
import init, { Engine, ModelBytes } from './pkg/lamina_web.js';

const $ = (id) => document.getElementById(id);
// Slices of the file copied at a time: the file is never whole in JavaScript.
const CHUNK = 16 << 20;

const L = (window.lamina = {
  state: 'starting',
  message: '',
  tokens: [],
  prefill_tps: 0,
  decode_tps: 0,
  gpu_errors: [],
  adapter: '',
  checkShaders: async () => {
    throw new Error('the GPU is not open yet');
  },
});

let engine = null;
// Whether a model is loaded (a failed generation leaves it loaded; a failed
// load does not, as the engine drops the old model first; a file that could
// not be read leaves the old one).
let modelReady = false;
let stopRequested = false;
// Set when the engine panicked: its pending promise never settles and its
// state is unknown, so the page stops taking input until it is reloaded.
let broken = false;

function setState(state, status) {
  if (broken) return;
  L.state = state;
  if (status !== undefined) $('status').textContent = status;
  const busy = state === 'loading' || state === 'generating';
  $('model').disabled = !engine || busy;
  $('generate').disabled = !modelReady || busy;
  $('stop').disabled = state !== 'generating';
}

function fail(err, state = 'error') {
  const msg = err && err.message ? err.message : String(err);
  L.message = msg;
  $('message').textContent = msg;
  collectGpuErrors();
  setState(state, state === 'error' ? 'failed' : '');
  console.error(err);
}

function collectGpuErrors() {
  if (engine) L.gpu_errors.push(...engine.take_gpu_errors());
}

function clearMessage() {
  L.message = '';
  $('message').textContent = '';
}

async function loadFile(file) {
  clearMessage();
  setState('loading', `reading ${file.name}…`);
  $('model-info').textContent = '';
  try {
    const bytes = new ModelBytes(file.size);
    for (let off = 0; off < file.size; off += CHUNK) {
      const end = Math.min(off + CHUNK, file.size);
      bytes.write(off, new Uint8Array(await file.slice(off, end).arrayBuffer()));
      $('status').textContent = `reading ${file.name}: ${Math.round((100 * end) / file.size)}%`;
    }
    $('status').textContent = 'uploading the weights and compiling the shaders…';
    const ctx = Math.max(0, Math.floor(number('ctx', 0)));
    modelReady = false;
    const described = await engine.load(bytes, file.name, ctx);
    $('model-info').textContent = described;
    const chat = engine.has_chat_template();
    $('chat').disabled = !chat;
    $('chat').checked = chat;
    collectGpuErrors();
    modelReady = true;
    setState('ready', 'ready: type a prompt');
  } catch (e) {
    fail(e);
  } finally {
    // Picking the same file again (say with a smaller context) fires
    // `change` only if the input is cleared.
    $('model').value = '';
  }
}

// A field's number, or `fallback` when it is empty or not a number.
function number(id, fallback) {
  const text = $(id).value.trim();
  const v = Number(text);
  return text !== '' && Number.isFinite(v) ? v : fallback;
}

async function generate() {
  clearMessage();
  stopRequested = false;
  L.tokens = [];
  L.prefill_tps = 0;
  L.decode_tps = 0;
  $('output').textContent = '';
  $('stats').textContent = '';
  try {
    const n = Math.max(1, Math.floor(number('n-predict', 128)));
    engine.start(number('temperature', 0.8), Math.max(0, Math.floor(number('top-k', 40))),
      number('top-p', 0.95), 1.0, Math.floor(number('seed', -1)));
    const ids = engine.encode($('prompt').value, $('chat').checked);
    if (ids.length >= engine.max_ctx()) {
      throw new Error(`the prompt is ${ids.length} tokens, which does not fit in a context of ${engine.max_ctx()}`);
    }
    setState('generating', `prompt: ${ids.length} tokens…`);
    const t0 = performance.now();
    let next = await engine.feed(ids);
    const t1 = performance.now();
    L.prefill_tps = ids.length / ((t1 - t0) / 1000);
    let steps = 0;
    let t2 = t1;
    for (;;) {
      if (engine.is_eog(next)) break;
      L.tokens.push(next);
      $('output').textContent += engine.piece(next);
      if (L.tokens.length >= n || stopRequested || engine.position() >= engine.max_ctx()) break;
      next = await engine.feed([next]);
      steps += 1;
      t2 = performance.now();
      L.decode_tps = steps / ((t2 - t1) / 1000);
      $('stats').textContent = stats(ids.length, t1 - t0, steps, t2 - t1);
    }
    $('output').textContent += engine.flush();
    $('stats').textContent = stats(ids.length, t1 - t0, steps, t2 - t1);
    collectGpuErrors();
    setState('done', stopRequested ? 'stopped' : 'done');
  } catch (e) {
    fail(e);
  }
}

function stats(promptTokens, promptMs, steps, stepMs) {
  const pp = `prompt: ${promptTokens} tokens, ${(promptTokens / (promptMs / 1000)).toFixed(1)} t/s`;
  if (steps === 0) return pp;
  return `${pp}; generated: ${steps + 1} tokens, ${(steps / (stepMs / 1000)).toFixed(1)} t/s`;
}

// The adapter as the browser names it (wgpu's WebGPU backend leaves the
// names empty); the engine's own description when the browser says nothing.
async function adapterName() {
  try {
    const info = (await navigator.gpu.requestAdapter())?.info;
    const name = [info?.vendor, info?.architecture, info?.description].filter(Boolean).join(' ');
    if (name) return name;
  } catch (e) {
    console.warn(e);
  }
  return engine.adapter();
}

async function main() {
  if (!('gpu' in navigator)) {
    fail(new Error('This browser has no WebGPU (navigator.gpu is missing): use a recent Chrome, Edge or Safari, or enable WebGPU in its settings.'), 'no-webgpu');
    return;
  }
  await init();
  try {
    engine = await Engine.open();
  } catch (e) {
    // The engine's message names what is missing (no adapter, or a device
    // it could not open) and what to do.
    fail(e, 'no-webgpu');
    return;
  }
  L.adapter = await adapterName();
  L.checkShaders = () => engine.check_shaders();
  $('model').addEventListener('change', () => {
    const f = $('model').files[0];
    if (f) loadFile(f);
  });
  $('generate').addEventListener('click', generate);
  $('stop').addEventListener('click', () => { stopRequested = true; });
  setState('idle', `GPU: ${L.adapter}. Choose a .gguf or .lamina.safetensors file.`);
}

// A panic in the engine (console.rs logs it) rejects nothing: the awaited
// promise never settles. The browser reports it here instead.
// Nothing here calls into the engine again.
function engineStopped(err) {
  if (broken) return;
  broken = true;
  const msg = `the engine stopped (${err && err.message ? err.message : err}); reload the page`;
  L.state = 'error';
  L.message = msg;
  $('message').textContent = msg;
  $('status').textContent = 'failed';
  for (const id of ['model', 'generate', 'stop']) $(id).disabled = true;
  console.error(err);
}
window.addEventListener('error', (e) => engineStopped(e.error || e.message));
window.addEventListener('unhandledrejection', (e) => engineStopped(e.reason));

main().catch((e) => fail(e));
