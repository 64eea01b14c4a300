// Draw Kuzushiji-MNIST characters made by the exported generator, in the browser, with onnxruntime-web (WASM).
//
// The model's interface (see the README): input "z" float32 [batch, latent_dim], output "images" float32
// [batch, 1, 28, 28] in [-1, 1]. The page reads latent_dim from the model's input metadata.
import * as ort from "./node_modules/onnxruntime-web/dist/ort.wasm.min.mjs";

const INPUT_NAME = "z";
const OUTPUT_NAME = "images";
const PAD = 2; // pixels between characters on the canvas
const SCALE = 4; // on-screen magnification (CSS only: the canvas holds one pixel per image pixel)

// Multi-threaded WASM needs a cross-origin isolated page (COOP/COEP headers) and buys nothing for this small model.
ort.env.wasm.numThreads = 1;

const params = new URLSearchParams(window.location.search);
const modelUrl = params.get("model") ?? "generator.onnx";
// A positive integer URL parameter, or the fallback when it is absent or not one.
function positiveInteger(name, fallback) {
  const value = Number.parseInt(params.get(name) ?? "", 10);
  return Number.isInteger(value) && value > 0 ? value : fallback;
}
const count = Math.min(1024, positiveInteger("n", 32));
const columns = positiveInteger("columns", 8);
let nextSeed = params.has("seed") ? (Number.parseInt(params.get("seed"), 10) >>> 0) : null;

const button = document.getElementById("generate");
const status = document.getElementById("status");
const canvas = document.getElementById("canvas");
document.getElementById("model-url").textContent = modelUrl;

// What the page did last, for people poking at it in the console and for the end-to-end test.
const state = { phase: "loading", generations: 0, seed: null, noise: null, layout: { count, columns, pad: PAD } };
window.kmnist = state;

function setPhase(phase, message) {
  state.phase = phase;
  document.body.dataset.phase = phase;
  status.textContent = message;
}

// mulberry32: a small seeded PRNG, so a seed reproduces the same noise.
function mulberry32(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// Standard normal noise [n * latentDim] by Box-Muller.
function normalNoise(n, latentDim, seed) {
  const uniform = mulberry32(seed);
  const noise = new Float32Array(n * latentDim);
  for (let i = 0; i < noise.length; i += 2) {
    const radius = Math.sqrt(-2 * Math.log(1 - uniform()));
    const angle = 2 * Math.PI * uniform();
    noise[i] = radius * Math.cos(angle);
    if (i + 1 < noise.length) noise[i + 1] = radius * Math.sin(angle);
  }
  return noise;
}

// [-1, 1] -> [0, 255], rounding half to even like numpy.rint (gan.onnx_generator.to_uint8).
function toUint8(value) {
  const scaled = (Math.min(1, Math.max(-1, value)) + 1) * 127.5;
  const floor = Math.floor(scaled);
  const fraction = scaled - floor;
  return fraction > 0.5 || (fraction === 0.5 && floor % 2 === 1) ? floor + 1 : floor;
}

function draw(images, [n, , height, width]) {
  const rows = Math.ceil(n / columns);
  canvas.width = columns * (width + PAD) + PAD;
  canvas.height = rows * (height + PAD) + PAD;
  canvas.style.width = `${canvas.width * SCALE}px`;
  canvas.style.height = `${canvas.height * SCALE}px`;
  const context = canvas.getContext("2d");
  const picture = context.createImageData(canvas.width, canvas.height);
  const rgba = picture.data;
  for (let i = 3; i < rgba.length; i += 4) rgba[i] = 255; // opaque black background
  for (let k = 0; k < n; k++) {
    const top = PAD + Math.floor(k / columns) * (height + PAD);
    const left = PAD + (k % columns) * (width + PAD);
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        const gray = toUint8(images[(k * height + y) * width + x]);
        const at = ((top + y) * canvas.width + left + x) * 4;
        rgba[at] = rgba[at + 1] = rgba[at + 2] = gray;
      }
    }
  }
  context.putImageData(picture, 0, 0);
}

async function generate(session, latentDim) {
  button.disabled = true;
  const seed = nextSeed ?? crypto.getRandomValues(new Uint32Array(1))[0];
  nextSeed = null; // a ?seed= fixes the first batch only; every click after it draws fresh characters
  const noise = normalNoise(count, latentDim, seed);
  const started = performance.now();
  const outputs = await session.run({ [INPUT_NAME]: new ort.Tensor("float32", noise, [count, latentDim]) });
  const images = outputs[OUTPUT_NAME]; // float32 [count, 1, 28, 28]
  const milliseconds = performance.now() - started;
  draw(images.data, images.dims);
  Object.assign(state, { seed, noise: Array.from(noise), generations: state.generations + 1 });
  setPhase("generated", `${count} characters (seed ${seed}) in ${milliseconds.toFixed(1)} ms`);
  button.disabled = false;
}

async function main() {
  let session;
  try {
    session = await ort.InferenceSession.create(modelUrl, { executionProviders: ["wasm"] });
  } catch (error) {
    setPhase("error", `could not load ${modelUrl}: ${error.message}. Export one with python export.py.`);
    console.error(`could not load ${modelUrl}:`, error);
    return;
  }
  const latentDim = Number(session.inputMetadata[0].shape[1]);
  state.latentDim = latentDim;
  const run = () =>
    generate(session, latentDim).catch((error) => {
      setPhase("error", `generation failed: ${error.message}`);
      console.error(error);
    });
  button.addEventListener("click", run);
  setPhase("ready", `model loaded (latent_dim ${latentDim})`);
  await run(); // a first batch right away; every click on "generate" draws a fresh one
}

main();
