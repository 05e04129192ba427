// A gzipped tar (ustar) of small text files, built in the browser to re-upload an edited flow.
const encoder = new TextEncoder();

function header(name, size) {
  const block = new Uint8Array(512);
  const put = (text, offset, length) => block.set(encoder.encode(text).slice(0, length), offset);
  const octal = (n, length) => n.toString(8).padStart(length - 1, "0") + "\0";
  put(name, 0, 100);
  put(octal(0o644, 8), 100, 8);
  put(octal(0, 8), 108, 8);
  put(octal(0, 8), 116, 8);
  put(octal(size, 12), 124, 12);
  put(octal(Math.floor(Date.now() / 1000), 12), 136, 12);
  put("        ", 148, 8); // checksum counts as spaces while summing
  put("0", 156, 1);
  put("ustar\0", 257, 6);
  put("00", 263, 2);
  let sum = 0;
  for (const byte of block) sum += byte;
  put(sum.toString(8).padStart(6, "0") + "\0 ", 148, 8);
  return block;
}

/** files: {path: text} -> Blob (application/gzip). */
export async function targz(files) {
  const parts = [];
  for (const [path, text] of Object.entries(files)) {
    const data = encoder.encode(text);
    parts.push(header(path, data.length), data, new Uint8Array((512 - (data.length % 512)) % 512));
  }
  parts.push(new Uint8Array(1024));
  const tar = new Blob(parts);
  return new Response(tar.stream().pipeThrough(new CompressionStream("gzip"))).blob();
}
