// Runs firmware test modules on MicroPython's WebAssembly port, a 32-bit MicroPython (4-byte
// pointers and objects, 16-byte GC blocks, 31-bit small ints, ticks wrapping at 2**30, as on
// the ESP32), under Node.js. The pytest wrapper is tests/firmware/test_micropython_wasm.py.
//
//   node run.mjs PKGDIR MPYDIR ROOT HEAPSIZE MODULE...   one test per call, see below
//   node run.mjs PKGDIR MPYDIR ROOT HEAPSIZE --steps     a whole device, one event per call
//
// PKGDIR: the npm package @micropython/micropython-webassembly-pyscript. MPYDIR: the .mpy
// files (firmware in etfw/, the tests, their fakes, fwwasm and fwsteps from this folder),
// copied into the port's own in-memory filesystem (Emscripten's MEMFS) at /fw; ROOT's
// docs/protocol.md goes to /repo/docs (the test vectors); the tests' folders go below
// /tmp/fw there. Nothing touches the host's filesystem or network.
//
// How this port's heap works (ports/webassembly/main.c, variant "pyscript", the only one on
// npm): HEAPSIZE is the heap it starts with. Inside a call from JavaScript it never collects
// garbage (it cannot see the pointers in WebAssembly's locals): when an allocation does not
// fit, it adds another heap area (up to 128 MiB) instead. It collects, and gives back areas
// left empty, only when control is back in JavaScript. So:
// - each test is one call, and is measured by what it allocated with no collection at all
//   during it (`uncollected`: live objects plus every piece of garbage) and by whether the
//   heap had to grow past HEAPSIZE for it (`heap_grown_to_bytes`);
// - the live heap is exact at the call boundaries (after importing a module, between tests);
// - --steps drives one device one event at a time (fwsteps.py), so the heap is collected
//   after every main-loop step, key edge, command and boot, as a device could: there the
//   live peak is exact at every step, and the heap not growing past HEAPSIZE means that the
//   device, the firmware's code and the test harness fit in HEAPSIZE on a 32-bit
//   MicroPython even with collections only between steps.
//
// Prints "name: value" figures (bytes) and closes with "N passed, M failed".
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

const [pkgDir, mpyDir, root, heapArg, ...modules] = process.argv.slice(2);
const { loadMicroPython } = await import(pathToFileURL(path.join(pkgDir, "micropython.mjs")));
const heapsize = parseInt(heapArg) * (/k$/i.test(heapArg) ? 1024 : 1);
let captured = null;
const out = s => (captured === null ? process.stdout.write(s + "\n") : captured.push(s));
const mp = await loadMicroPython({ heapsize, stdout: out, stderr: out });
const fig = (k, v) => console.log(`${k}: ${v}`);

function copyTree(src, dst) {
  mp.FS.mkdirTree(dst);
  for (const e of fs.readdirSync(src, { withFileTypes: true })) {
    if (e.isDirectory()) copyTree(path.join(src, e.name), dst + "/" + e.name);
    else mp.FS.writeFile(dst + "/" + e.name, fs.readFileSync(path.join(src, e.name)));
  }
}
copyTree(mpyDir, "/fw");
mp.FS.mkdirTree("/repo/docs");
mp.FS.writeFile("/repo/docs/protocol.md", fs.readFileSync(path.join(root, "docs/protocol.md")));
mp.FS.mkdirTree("/tmp/fw");
mp.FS.chdir("/fw");

// gc.mem_free() on this port includes the room the heap could still grow by ("max new
// split" in micropython.mem_info()); fwwasm.heap() subtracts it to get the heap's size.
captured = [];
mp.runPython("import micropython, sys\nmicropython.mem_info()\nsys.path.insert(0, '/fw')");
const info = captured.join("\n");
captured = null;
const grow = Number((/max new split: (\d+)/.exec(info) || [0, 0])[1]);

const w = mp.pyimport("fwwasm");
fig("mpy_abi", w.setup(".", "EVALTERM_ROOT=/repo\nFW_TMP=/tmp/fw\nFW_HEAP_SAMPLE=0\n", grow));
const heap = () => w.heap().split(" ").map(Number);
const [base, size0] = heap();
fig("heap_size_bytes", size0);
fig("heap_base_bytes", base);
let passed = 0, failed = 0;

if (modules[0] === "--steps") {
  const st = mp.pyimport("fwsteps");
  const ops = [];
  for (const tok of st.SCRIPT.split(" ")) {
    const [op, n] = tok.split("*");
    for (let i = 0; i < (Number(n) || 1); i++) ops.push(op);
  }
  w.collect();
  const [imported] = heap();
  let maxLive = 0, maxAlloc = 0, maxSize = size0, liveAt = "", allocAt = "", grewAt = "";
  for (let i = 0; i < ops.length; i++) {
    st.do(ops[i]);
    const [alloc, size] = heap(); // not collected yet: the event's garbage is included
    w.collect();
    const [live] = heap();
    if (live > maxLive) { maxLive = live; liveAt = `${i}:${ops[i]}`; }
    if (alloc > maxAlloc) { maxAlloc = alloc; allocAt = `${i}:${ops[i]}`; }
    if (size > maxSize) { maxSize = size; grewAt = `${i}:${ops[i]}`; }
  }
  let res;
  try { res = st.check(); } catch (e) { res = String(e.message || e); }
  if (res === "ok") passed++; else { failed++; console.log(`FAIL fwsteps.check: ${res}`); }
  fig("steps_events", ops.length);
  fig("heap_imported_bytes", imported);
  fig("heap_peak_live_bytes", maxLive);
  fig("heap_peak_live_at", liveAt);
  fig("heap_peak_uncollected_bytes", maxAlloc);
  fig("heap_peak_uncollected_at", allocAt);
  fig("heap_grown_to_bytes", maxSize);
  fig("heap_grown_at", grewAt || "-");
} else {
  for (const mod of modules) {
    const names = w.load(mod).split(" ").filter(Boolean);
    const [imported] = heap();
    let maxLive = imported, maxAlloc = 0, maxSize = size0, allocAt = "", grewIn = "";
    for (const t of names) {
      const parts = w.run(mod, t).split(" ");
      const size = Number(parts.pop()), alloc = Number(parts.pop());
      const res = parts.join(" ");
      const [live] = heap();
      if (res === "ok") passed++; else { failed++; console.log(`FAIL ${mod}.${t}: ${res}`); }
      console.log(`test ${mod}.${t}: uncollected ${alloc} heap ${size} live after ${live}`);
      maxLive = Math.max(maxLive, live);
      if (alloc > maxAlloc) { maxAlloc = alloc; allocAt = t; }
      if (size > size0 && !grewIn) grewIn = t; // areas not emptied stay: the first
      maxSize = Math.max(maxSize, size);
    }
    w.unload(mod);
    fig("heap_imported_bytes", imported);
    fig("heap_live_between_tests_bytes", maxLive);
    fig("heap_peak_uncollected_bytes", maxAlloc);
    fig("heap_peak_uncollected_at", allocAt || "-");
    fig("heap_grown_to_bytes", maxSize);
    fig("heap_first_grown_in", grewIn || "-");
  }
}
console.log(`${passed} passed, ${failed} failed`);
process.exitCode = failed ? 1 : 0;
