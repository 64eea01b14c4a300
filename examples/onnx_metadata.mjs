// What an exported generator's labels mean, for examples/node and examples/web (which serves this file too).
//
// onnxruntime-node and onnxruntime-web tell a session's input names and shapes, but not the model's metadata, and a
// class-conditional generator (inputs "z" and "labels") keeps there what its labels mean: num_classes, class_names
// (the characters, a JSON list) and class_names_romanized. The file is a protocol buffer (onnx.proto's ModelProto),
// simple to read at the top level: each field is a key (field number, wire type), then a varint, 8 or 4 bytes, or a
// length and that many bytes. metadata_props is field 14, each entry {key = 1, value = 2}.
const METADATA_PROPS = 14;
export const LABELS_NAME = "labels";

function readVarint(bytes, state) {
  let value = 0;
  for (let scale = 1; ; scale *= 128) {
    if (state.at >= bytes.length) throw new Error("the file ends inside a protobuf field: truncated?");
    const byte = bytes[state.at++];
    value += (byte & 0x7f) * scale; // arithmetic, not bit operations: lengths may pass 2**31
    if (byte < 0x80) return value;
  }
}

// The fields of one protobuf message as [field number, bytes], the bytes null unless length-delimited.
function* fields(bytes) {
  const state = { at: 0 };
  while (state.at < bytes.length) {
    const key = readVarint(bytes, state);
    const wireType = key % 8;
    let body = null;
    if (wireType === 0) readVarint(bytes, state);
    else if (wireType === 1) state.at += 8;
    else if (wireType === 5) state.at += 4;
    else if (wireType === 2) {
      const length = readVarint(bytes, state);
      body = bytes.subarray(state.at, state.at + length);
      state.at += length;
    } else throw new Error(`protobuf wire type ${wireType} where an ONNX model has none: not an ONNX file?`);
    if (state.at > bytes.length) throw new Error("the file ends inside a protobuf field: truncated?");
    yield [Math.floor(key / 8), body];
  }
}

// An ONNX file's metadata_props as a plain object, from the file's bytes (a Uint8Array).
export function readModelMetadata(bytes) {
  const decoder = new TextDecoder();
  const metadata = {};
  for (const [number, body] of fields(bytes)) {
    if (number !== METADATA_PROPS || body === null) continue;
    const entry = { 1: "", 2: "" };
    for (const [part, text] of fields(body)) if (text !== null) entry[part] = decoder.decode(text);
    metadata[entry[1]] = entry[2];
  }
  return metadata;
}

// The classes of a class-conditional model, {characters, romanized}, or null for the chapter's unconditional model
// (no "labels" input). Throws if a model has the input but its metadata does not say what the labels mean.
export function modelClasses(inputNames, metadata) {
  if (!inputNames.includes(LABELS_NAME)) return null;
  const characters = parseList(metadata.class_names);
  const romanized = parseList(metadata.class_names_romanized ?? "[]");
  if (!characters || characters.length !== Number(metadata.num_classes) || !romanized
      || (romanized.length !== 0 && romanized.length !== characters.length)) {
    throw new Error(`the model has a '${LABELS_NAME}' input, but its metadata does not say what the labels mean ` +
      `(num_classes ${metadata.num_classes}, class_names ${metadata.class_names}); re-export it with ` +
      "python export.py RUN_DIR");
  }
  return { characters, romanized };
}

function parseList(text) {
  try {
    const list = JSON.parse(text);
    return Array.isArray(list) && list.every((name) => typeof name === "string" && name) ? list : null;
  } catch {
    return null;
  }
}

// The class index that `label` names (an index "3", a character "つ" or a romanized name "tsu"), or null.
export function classIndex(classes, label) {
  const name = String(label).trim();
  for (const names of [classes.characters, classes.romanized]) {
    const index = names.findIndex((candidate) => candidate === name || candidate === name.toLowerCase());
    if (index >= 0) return index;
  }
  return /^[0-9]+$/.test(name) && Number(name) < classes.characters.length ? Number(name) : null;
}

// "0 お (o), 1 き (ki), ...": the valid classes, for messages.
export function describeClasses(classes) {
  return classes.characters
    .map((character, index) => `${index} ${character}${classes.romanized[index] ? ` (${classes.romanized[index]})` : ""}`)
    .join(", ");
}

// The labels of `count` images: all `index`, or (index null) the classes in turn, 0, 1, ..., as gan.noise.sample_labels.
export function labelsFor(classes, count, index) {
  return Array.from({ length: count }, (_, i) => index ?? i % classes.characters.length);
}
