// Draw Kuzushiji-MNIST characters made by the exported generator, in the browser, with onnxruntime-web (WASM).
//
// The model's interface (docs/deployment.md): input "z" float32 [batch, latent_dim], output "images" float32
// [batch, 1, 28, 28] in [-1, 1]. The page reads latent_dim from the model's input metadata. A class-conditional
// model also takes "labels" int64 [batch]: the page then shows one button per class (its character, from the model's
// metadata), which draws that class, and "all", which draws the classes in turn, one column each.
import * as ort from "./node_modules/onnxruntime-web/dist/ort.wasm.min.mjs";

// serve.py serves examples/onnx_metadata.mjs here: examples/node reads the model's metadata with the same code.
import { classIndex, describeClasses, LABELS_NAME, labelsFor, modelClasses, readModelMetadata } from "./onnx_metadata.mjs";

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
const columnsParameter = positiveInteger("columns", null);
let nextSeed = params.has("seed") ? (Number.parseInt(params.get("seed"), 10) >>> 0) : null;

const button = document.getElementById("generate");
const classGroup = document.getElementById("classes");
const status = document.getElementById("status");
const canvas = document.getElementById("canvas");
document.getElementById("model-url").textContent = modelUrl;

// What the page did last, for people poking at it in the console and for the end-to-end test. label: the chosen
// class (null: the classes in turn); labels: what the last batch fed to the model's "labels" input.
const state = {
  phase: "loading", generations: 0, seed: null, noise: null, classNames: null, label: null, labels: null,
  layout: { count, columns: columnsParameter ?? 8, pad: PAD },
};
window.kmnist = state;

// Images a row: ?columns=, else 8, or for a conditional model's classes in turn one column per class.
function columnsFor(classes) {
  return columnsParameter ?? (classes && state.label === null ? Math.min(classes.characters.length, count) : 8);
}

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

function draw(images, [n, , height, width], columns) {
  const rows = Math.ceil(n / columns);
  canvas.width = columns * (width + PAD) + PAD;
  canvas.height = rows * (height + PAD) + PAD;
  canvas.style.width = `${canvas.width * SCALE}px`; // the height follows (CSS height: auto), also when scaled down
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

// Every button off while a batch is made: one session runs one batch at a time.
function setBusy(busy) {
  for (const element of [button, ...classGroup.querySelectorAll("button")]) element.disabled = busy;
}

async function generate(session, latentDim, classes) {
  setBusy(true);
  const seed = nextSeed ?? crypto.getRandomValues(new Uint32Array(1))[0];
  nextSeed = null; // a ?seed= fixes the first batch only; every click after it draws fresh characters
  const noise = normalNoise(count, latentDim, seed);
  const feeds = { [INPUT_NAME]: new ort.Tensor("float32", noise, [count, latentDim]) };
  const labels = classes ? labelsFor(classes, count, state.label) : null;
  if (labels) feeds[LABELS_NAME] = new ort.Tensor("int64", BigInt64Array.from(labels, BigInt), [count]);
  const started = performance.now();
  const outputs = await session.run(feeds);
  const images = outputs[OUTPUT_NAME]; // float32 [count, 1, 28, 28]
  const milliseconds = performance.now() - started;
  const columns = columnsFor(classes);
  draw(images.data, images.dims, columns);
  state.layout = { count, columns, pad: PAD };
  Object.assign(state, { seed, noise: Array.from(noise), labels, generations: state.generations + 1 });
  const which = !classes ? "" : state.label === null ? ", the classes in turn"
    : ` of ${classes.characters[state.label]} (${classes.romanized[state.label] ?? `class ${state.label}`})`;
  setPhase("generated", `${count} characters${which} (seed ${seed}) in ${milliseconds.toFixed(1)} ms`);
  setBusy(false);
}

// One button per class (and "all"); a click chooses the class and draws a batch of it.
function showClasses(classes, run) {
  const choices = [[null, "all", "the classes in turn, one column each"]];
  classes.characters.forEach((character, index) => {
    choices.push([index, character, `${classes.romanized[index] ?? character} (class ${index})`]);
  });
  const buttons = choices.map(([label, text, title]) => {
    const choice = document.createElement("button");
    choice.title = title;
    if (label === null) choice.textContent = text;
    else { // the character, and its romanized name below it for readers (and machines) without kana
      const character = Object.assign(document.createElement("span"), { lang: "ja", textContent: text });
      const romanized = Object.assign(document.createElement("small"), { textContent: classes.romanized[label] ?? "" });
      choice.append(character, romanized);
    }
    choice.addEventListener("click", () => {
      state.label = label;
      buttons.forEach((other, i) => other.setAttribute("aria-pressed", String(choices[i][0] === label)));
      run();
    });
    classGroup.append(choice);
    return choice;
  });
  buttons.forEach((choice, i) => choice.setAttribute("aria-pressed", String(choices[i][0] === state.label)));
  classGroup.hidden = false;
}

// The model file's bytes: read once for the session and for the metadata that says what its labels mean.
async function loadModel() {
  const response = await fetch(modelUrl);
  if (!response.ok) throw new Error(`HTTP ${response.status} ${response.statusText}`);
  const bytes = new Uint8Array(await response.arrayBuffer());
  const session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"] });
  return { session, classes: modelClasses(session.inputNames, readModelMetadata(bytes)) };
}

async function main() {
  let session;
  let classes;
  try {
    ({ session, classes } = await loadModel());
  } catch (error) {
    setPhase("error", `could not load ${modelUrl}: ${error.message}. Export one with python export.py.`);
    console.error(`could not load ${modelUrl}:`, error);
    return;
  }
  const latentDim = Number(session.inputMetadata[0].shape[1]);
  Object.assign(state, { latentDim, classNames: classes?.characters ?? null });
  const chosen = params.get("label");
  if (chosen !== null) {
    const problem = !classes ? "this model is not class-conditional (it has no 'labels' input)"
      : classIndex(classes, chosen) === null ? `its classes are ${describeClasses(classes)}` : null;
    if (problem) {
      setPhase("error", `?label=${chosen} cannot be drawn: ${problem}.`);
      return;
    }
    state.label = classIndex(classes, chosen);
  }
  const run = () =>
    generate(session, latentDim, classes).catch((error) => {
      setPhase("error", `generation failed: ${error.message}`);
      console.error(error);
    });
  button.addEventListener("click", run);
  if (classes) showClasses(classes, run);
  setPhase("ready", `model loaded (latent_dim ${latentDim}${classes ? `, ${classes.characters.length} classes` : ""})`);
  await run(); // a first batch right away; every click on "generate" (or a class) draws a fresh one
}

main();
