// A Node allocator inside the V8 heap: an ever longer array of distinct strings
// (the old space grows, unlike node_alloc.js's Buffers, which live outside it).
const kept = [];
for (let i = 0; ; i++) kept.push("x".repeat(1000) + i);
