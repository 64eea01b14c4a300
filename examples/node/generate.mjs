// Generate Kuzushiji-MNIST characters from given noise with the exported generator and onnxruntime-node.
//
//   node generate.mjs MODEL.onnx NOISE.npy OUT_DIR
//
// NOISE.npy: float32 [N, latent_dim] (little-endian, C order), e.g. np.save("noise.npy", z.astype(np.float32)).
// OUT_DIR receives images.npy (the model's raw float32 output [N, 1, 28, 28] in [-1, 1]), image_000.png ...
// (one 28x28 grayscale PNG per image) and grid.png (all of them tiled).
import fs from "node:fs";
import path from "node:path";
import zlib from "node:zlib";

import * as ort from "onnxruntime-node";

const INPUT_NAME = "z";
const OUTPUT_NAME = "images";

function fail(message) {
  console.error(`generate.mjs: error: ${message}`);
  process.exit(1);
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

function writeNpyFloat32(file, data, shape) {
  let header = `{'descr': '<f4', 'fortran_order': False, 'shape': (${shape.join(", ")}${shape.length === 1 ? "," : ""}), }`;
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

async function main() {
  const [modelPath, noisePath, outDir] = process.argv.slice(2);
  if (!modelPath || !noisePath || !outDir) fail("usage: node generate.mjs MODEL.onnx NOISE.npy OUT_DIR");
  if (!fs.existsSync(modelPath)) fail(`${modelPath} does not exist; export a run first: python export.py RUN_DIR`);

  let session;
  try {
    // One intra-op thread: faster than onnxruntime's default spinning pool for this small model on small machines.
    session = await ort.InferenceSession.create(modelPath, { intraOpNumThreads: 1, executionProviders: ["cpu"] });
  } catch (error) {
    fail(`${modelPath} is not a loadable ONNX model (${error.message}); re-export it with python export.py RUN_DIR`);
  }
  const latentDim = Number(session.inputMetadata?.[0]?.shape?.[1]);
  const noise = readNpyFloat32(noisePath);
  if (noise.shape.length !== 2 || (Number.isFinite(latentDim) && noise.shape[1] !== latentDim)) {
    fail(`${noisePath} has shape [${noise.shape}], expected [N, ${latentDim}] (N noise vectors of the model's latent_dim)`);
  }
  const [count] = noise.shape;

  const feeds = { [INPUT_NAME]: new ort.Tensor("float32", noise.data, noise.shape) };
  const output = (await session.run(feeds))[OUTPUT_NAME]; // float32 [N, 1, 28, 28]
  const [, , height, width] = output.dims;

  fs.mkdirSync(outDir, { recursive: true });
  writeNpyFloat32(path.join(outDir, "images.npy"), output.data, output.dims);

  const columns = Math.ceil(Math.sqrt(count));
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
  console.log(`wrote ${count} images (${width}x${height}) to ${outDir}: images.npy, image_*.png, grid.png`);
}

await main();
