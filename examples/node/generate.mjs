// Generate Kuzushiji-MNIST characters from given noise with the exported generator and onnxruntime-node.
//
//   node generate.mjs MODEL.onnx NOISE.npy OUT_DIR [--label LABEL]
//
// NOISE.npy: float32 [N, latent_dim] (little-endian, C order), e.g. np.save("noise.npy", z.astype(np.float32)).
// OUT_DIR receives images.npy (the model's raw float32 output [N, 1, 28, 28] in [-1, 1]), image_000.png ...
// (one 28x28 grayscale PNG per image) and grid.png (all of them tiled).
//
// A class-conditional model (trained with --num-classes) makes the class --label names: its index (3), character
// (つ) or romanized name (tsu). Without --label its images go through the classes in turn (image i: class i mod
// num_classes, as gan.noise.sample_labels), and grid.png has one column per class. OUT_DIR also receives labels.npy
// (int64 [N], each image's class). An unconditional model takes no --label.
import fs from "node:fs";
import path from "node:path";
import zlib from "node:zlib";

import * as ort from "onnxruntime-node";

import { classIndex, describeClasses, LABELS_NAME, labelsFor, modelClasses, readModelMetadata } from "../onnx_metadata.mjs";

const INPUT_NAME = "z";
const OUTPUT_NAME = "images";
const USAGE = "usage: node generate.mjs MODEL.onnx NOISE.npy OUT_DIR [--label LABEL]";

// Exit status 1 for a file that cannot be used, 2 for an argument that cannot be (as the Python commands).
function fail(message, status = 1) {
  console.error(`generate.mjs: error: ${message}`);
  process.exit(status);
}

// --- .npy reading and writing (format version 1.0/2.0, float32 little-endian, C order) ---

function readNpyFloat32(file) {
  const bytes = fs.readFileSync(file);
  if (bytes.length < 10 || bytes.toString("latin1", 0, 6) !== "\x93NUMPY") {
    fail(`${file} is not a .npy file (save the noise with numpy.save)`);
  }
  const major = bytes[6];
  const headerLength = major === 1 ? bytes.readUInt16LE(8) : bytes.readUInt32LE(8);
  const headerStart = major === 1 ? 10 : 12;
  const header = bytes.toString("latin1", headerStart, headerStart + headerLength);
  const descr = /'descr':\s*'([^']+)'/.exec(header)?.[1];
  const fortran = /'fortran_order':\s*True/.test(header);
  const shape = (/'shape':\s*\(([^)]*)\)/.exec(header)?.[1] ?? "")
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean)
    .map(Number);
  if (descr !== "<f4" || fortran) {
    fail(`${file} holds ${descr}${fortran ? " (Fortran order)" : ""}; expected float32 '<f4' in C order ` +
      `(use z.astype(np.float32) and np.ascontiguousarray)`);
  }
  const dataStart = headerStart + headerLength;
  const count = shape.reduce((a, b) => a * b, 1);
  if (bytes.length - dataStart !== count * 4) {
    fail(`${file} declares shape [${shape}] but holds ${bytes.length - dataStart} bytes of data: truncated?`);
  }
  // Copy into an aligned buffer: the data offset need not be a multiple of 4.
  const data = new Float32Array(count);
  Buffer.from(data.buffer).set(bytes.subarray(dataStart));
  return { data, shape };
}

// data: a Float32Array ('<f4') or a BigInt64Array ('<i8').
function writeNpy(file, data, shape) {
  const descr = data instanceof BigInt64Array ? "<i8" : "<f4";
  let header = `{'descr': '${descr}', 'fortran_order': False, 'shape': (${shape.join(", ")}${shape.length === 1 ? "," : ""}), }`;
  const unpadded = 10 + header.length + 1;
  header += " ".repeat((64 - (unpadded % 64)) % 64) + "\n";
  const prefix = Buffer.alloc(10);
  prefix.write("\x93NUMPY", 0, "latin1");
  prefix[6] = 1;
  prefix[7] = 0;
  prefix.writeUInt16LE(header.length, 8);
  fs.writeFileSync(file, Buffer.concat([prefix, Buffer.from(header, "latin1"), Buffer.from(data.buffer, data.byteOffset, data.byteLength)]));
}

// --- grayscale PNG writing (zlib is built in; CRC-32 as the PNG spec defines it) ---

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function crc32(buffer) {
  let c = 0xffffffff;
  for (const byte of buffer) c = CRC_TABLE[(c ^ byte) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function pngChunk(type, body) {
  const length = Buffer.alloc(4);
  length.writeUInt32BE(body.length);
  const typed = Buffer.concat([Buffer.from(type, "latin1"), body]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(typed));
  return Buffer.concat([length, typed, crc]);
}

function writeGrayPng(file, pixels, width, height) {
  const header = Buffer.alloc(13);
  header.writeUInt32BE(width, 0);
  header.writeUInt32BE(height, 4);
  header[8] = 8; // bit depth
  header[9] = 0; // grayscale
  const rows = Buffer.alloc((width + 1) * height); // each row: filter byte 0, then the pixels
  for (let y = 0; y < height; y++) rows.set(pixels.subarray(y * width, (y + 1) * width), y * (width + 1) + 1);
  fs.writeFileSync(file, Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    pngChunk("IHDR", header),
    pngChunk("IDAT", zlib.deflateSync(rows)),
    pngChunk("IEND", Buffer.alloc(0)),
  ]));
}

// [-1, 1] -> [0, 255], rounding half to even like numpy.rint and torch.round (gan.onnx_generator.to_uint8).
function toUint8(value) {
  const scaled = (Math.min(1, Math.max(-1, value)) + 1) * 127.5;
  const floor = Math.floor(scaled);
  const fraction = scaled - floor;
  return fraction > 0.5 || (fraction === 0.5 && floor % 2 === 1) ? floor + 1 : floor;
}

// The positional arguments and --label (anywhere, as "--label X" or "--label=X").
function parseArguments(argv) {
  const positional = [];
  let label = null;
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--label") {
      if (i + 1 >= argv.length) fail(`--label needs a value (a class index, character or romanized name)\n${USAGE}`, 2);
      label = argv[++i];
    } else if (argv[i].startsWith("--label=")) label = argv[i].slice("--label=".length);
    else if (argv[i].startsWith("--")) fail(`unknown option ${argv[i]}\n${USAGE}`, 2);
    else positional.push(argv[i]);
  }
  if (positional.length !== 3) fail(USAGE);
  return { modelPath: positional[0], noisePath: positional[1], outDir: positional[2], label };
}

// The class index of --label for a conditional model; null without --label. Refuses what the model cannot take.
function chosenClass(label, classes, modelPath) {
  if (label === null) return null;
  if (!classes) {
    fail(`--label ${label}: ${modelPath} is not class-conditional (it has no '${LABELS_NAME}' input), so it takes ` +
      "no labels; drop --label, or export a run trained with --num-classes", 2);
  }
  const index = classIndex(classes, label);
  if (index === null) {
    fail(`--label ${label} is not a class of this model; its ${classes.characters.length} classes are ` +
      `${describeClasses(classes)} (give the index, the character or the romanized name)`, 2);
  }
  return index;
}

async function main() {
  const { modelPath, noisePath, outDir, label } = parseArguments(process.argv.slice(2));
  if (!fs.existsSync(modelPath)) fail(`${modelPath} does not exist; export a run first: python export.py RUN_DIR`);

  let session;
  let classes;
  try {
    const bytes = fs.readFileSync(modelPath);
    // One intra-op thread: faster than onnxruntime's default spinning pool for this small model on small machines.
    session = await ort.InferenceSession.create(bytes, { intraOpNumThreads: 1, executionProviders: ["cpu"] });
    classes = modelClasses(session.inputNames, readModelMetadata(bytes));
  } catch (error) {
    fail(`${modelPath} is not a loadable ONNX model (${error.message}); re-export it with python export.py RUN_DIR`);
  }
  const chosen = chosenClass(label, classes, modelPath);
  const latentDim = Number(session.inputMetadata?.[0]?.shape?.[1]);
  const noise = readNpyFloat32(noisePath);
  if (noise.shape.length !== 2 || (Number.isFinite(latentDim) && noise.shape[1] !== latentDim)) {
    fail(`${noisePath} has shape [${noise.shape}], expected [N, ${latentDim}] (N noise vectors of the model's latent_dim)`);
  }
  const [count] = noise.shape;

  const feeds = { [INPUT_NAME]: new ort.Tensor("float32", noise.data, noise.shape) };
  const labels = classes ? BigInt64Array.from(labelsFor(classes, count, chosen), BigInt) : null;
  if (labels) feeds[LABELS_NAME] = new ort.Tensor("int64", labels, [count]);
  const output = (await session.run(feeds))[OUTPUT_NAME]; // float32 [N, 1, 28, 28]
  const [, , height, width] = output.dims;

  fs.mkdirSync(outDir, { recursive: true });
  writeNpy(path.join(outDir, "images.npy"), output.data, output.dims);
  if (labels) writeNpy(path.join(outDir, "labels.npy"), labels, [count]);

  // Near-square; a conditional model's classes in turn: one column per class.
  const columns = classes && chosen === null ? Math.min(classes.characters.length, count) : Math.ceil(Math.sqrt(count));
  const rows = Math.ceil(count / columns);
  const pad = 2;
  const gridWidth = columns * (width + pad) + pad;
  const grid = new Uint8Array(gridWidth * (rows * (height + pad) + pad));
  for (let i = 0; i < count; i++) {
    const image = Uint8Array.from(output.data.subarray(i * height * width, (i + 1) * height * width), toUint8);
    writeGrayPng(path.join(outDir, `image_${String(i).padStart(3, "0")}.png`), image, width, height);
    const top = pad + Math.floor(i / columns) * (height + pad);
    const left = pad + (i % columns) * (width + pad);
    for (let y = 0; y < height; y++) grid.set(image.subarray(y * width, (y + 1) * width), (top + y) * gridWidth + left);
  }
  writeGrayPng(path.join(outDir, "grid.png"), grid, gridWidth, grid.length / gridWidth);
  const which = !classes ? "" : chosen === null ? ` of the ${classes.characters.length} classes in turn`
    : ` of class ${chosen} ${classes.characters[chosen]}${classes.romanized[chosen] ? ` (${classes.romanized[chosen]})` : ""}`;
  const files = `images.npy, ${labels ? "labels.npy, " : ""}image_*.png, grid.png`;
  console.log(`wrote ${count} images${which} (${width}x${height}) to ${outDir}: ${files}`);
}

await main();
