// A Node allocator: grows Buffers (outside the V8 heap) by 1 MiB every millisecond.
const chunks = [];
function grow() {
  for (let i = 0; i < 4; i++) chunks.push(Buffer.alloc(1 << 20, 1));
  setTimeout(grow, 4);
}
grow();
