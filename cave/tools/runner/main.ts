// Cave's Deno broker: one long-lived process per session, started with no permissions.
//
// It speaks JSON lines with Cave on stdin/stdout and runs each registered tool in its own Web
// Worker with `permissions: "none"`, so a tool can reach the world only through syscall messages
// that this process relays to Cave (which checks, maybe asks, runs and audits them). Every frame
// it writes carries the token Cave sent in `hello`; a worker never sees that token, so bytes a
// tool manages to write to stdout by itself cannot pass as frames.
//
// Frames from Cave: hello {token, worker}, load {tool, b64}, unload {tool},
//   call {id, tool, args, max_output, max_result}, sysret {id, seq, ok, value|error}, cancel {id}.
// Frames to Cave: ready {deno}, sys {id, seq, op, args}, log {id, stream, text},
//   result {id, ok, value|error, cut}.

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

interface Slot {
  worker: Worker | null;
  b64: string;
  ready: Promise<void> | null;
  active: Active | null;
}

interface Active {
  id: number;
  tool: string;
  maxOutput: number;
  sent: number;
  cut: number;
}

const enc = new TextEncoder();
const out = Deno.stdout;
let token = "";
let workerSource = "";
const tools = new Map<string, Slot>();

function writeRaw(text: string): void {
  const bytes = enc.encode(text + "\n");
  let off = 0;
  while (off < bytes.length) off += out.writeSync(bytes.subarray(off));
}

function send(frame: { [k: string]: Json }): void {
  writeRaw(JSON.stringify({ t: token, ...frame }));
}

function errorOf(err: unknown): { name: string; message: string; stack: string } {
  if (err instanceof Error) {
    return { name: err.name, message: err.message, stack: String(err.stack ?? "") };
  }
  return { name: "Error", message: String(err), stack: "" };
}

function finish(slot: Slot, frame: { [k: string]: Json }, rawValue?: string): void {
  const a = slot.active;
  if (a === null) return;
  slot.active = null;
  const head = JSON.stringify({ t: token, type: "result", id: a.id, cut: a.cut, ...frame });
  if (rawValue === undefined) writeRaw(head);
  else writeRaw(head.slice(0, -1) + ',"value":' + rawValue + "}");
}

function startWorker(name: string, slot: Slot): Promise<void> {
  const url = "data:application/typescript;base64," + btoa(workerSource);
  const worker = new Worker(url, {
    type: "module",
    name: `cave-tool:${name}`,
    // deno-lint-ignore no-explicit-any
    deno: { permissions: "none" } as any,
  });
  slot.worker = worker;
  let loaded: (error: string | null) => void = () => {};
  const ready = new Promise<void>((resolve, reject) => {
    loaded = (error) => (error === null ? resolve() : reject(new Error(error)));
  });
  worker.onmessage = (e: MessageEvent) => onWorker(name, slot, worker, e.data, loaded);
  worker.onerror = (e: ErrorEvent) => {
    e.preventDefault();
    const message = e.message || "the tool's worker failed";
    loaded(message);
    if (slot.worker === worker) {
      worker.terminate();
      slot.worker = null;
      slot.ready = null;
    }
    finish(slot, { ok: false, error: { name: "Error", message, stack: "" } });
  };
  worker.postMessage({ type: "load", b64: slot.b64 });
  return ready;
}

// deno-lint-ignore no-explicit-any
function onWorker(name: string, slot: Slot, worker: Worker, m: any, loaded: (e: string | null) => void): void {
  if (slot.worker !== worker || m === null || typeof m !== "object") return;
  const a = slot.active;
  switch (m.type) {
    case "loaded":
      loaded(typeof m.error === "string" ? m.error : null);
      return;
    case "log": {
      if (a === null || typeof m.text !== "string") return;
      const room = a.maxOutput - a.sent;
      let text = m.text as string;
      if (text.length > room) {
        a.cut += text.length - Math.max(room, 0);
        text = room > 0 ? text.slice(0, room) : "";
      }
      if (text.length > 0) {
        a.sent += text.length;
        send({ type: "log", id: a.id, stream: m.stream === "stderr" ? "stderr" : "stdout", text });
      }
      return;
    }
    case "sys":
      if (a === null || typeof m.op !== "string" || typeof m.seq !== "number") return;
      send({ type: "sys", id: a.id, seq: m.seq, op: m.op, args: m.args ?? null });
      return;
    case "result":
      if (a === null || m.id !== a.id) return;
      if (m.ok === true && typeof m.json === "string") finish(slot, { ok: true }, m.json);
      else finish(slot, { ok: false, error: m.error ?? { name: "Error", message: "no result" } });
      return;
  }
}

async function call(m: { id: number; tool: string; args: Json; max_output: number; max_result: number }): Promise<void> {
  const slot = tools.get(m.tool);
  if (slot === undefined) {
    send({ type: "result", id: m.id, ok: false, cut: 0, error: { name: "ToolError", message: `no tool ${m.tool} is loaded`, stack: "" } });
    return;
  }
  slot.active = { id: m.id, tool: m.tool, maxOutput: m.max_output, sent: 0, cut: 0 };
  try {
    if (slot.worker === null || slot.ready === null) slot.ready = startWorker(m.tool, slot);
    await slot.ready;
  } catch (err) {
    if (slot.worker !== null) slot.worker.terminate();
    slot.worker = null;
    slot.ready = null;
    finish(slot, { ok: false, error: errorOf(err) });
    return;
  }
  if (slot.active?.id !== m.id || slot.worker === null) return;
  slot.worker.postMessage({ type: "call", id: m.id, args: m.args, max_result: m.max_result });
}

function cancel(id: number): void {
  for (const slot of tools.values()) {
    if (slot.active?.id === id) {
      if (slot.worker !== null) slot.worker.terminate();
      slot.worker = null;
      slot.ready = null;
      finish(slot, { ok: false, error: { name: "Cancelled", message: "cancelled", stack: "" } });
    }
  }
}

// deno-lint-ignore no-explicit-any
function handle(m: any): void {
  switch (m.type) {
    case "hello":
      token = String(m.token);
      workerSource = String(m.worker);
      send({ type: "ready", deno: Deno.version.deno, v8: Deno.version.v8 });
      return;
    case "load": {
      const old = tools.get(m.tool);
      if (old?.worker) old.worker.terminate();
      tools.set(String(m.tool), { worker: null, b64: String(m.b64), ready: null, active: null });
      return;
    }
    case "unload": {
      const old = tools.get(m.tool);
      if (old?.worker) old.worker.terminate();
      tools.delete(String(m.tool));
      return;
    }
    case "call":
      call(m);
      return;
    case "cancel":
      cancel(Number(m.id));
      return;
    case "sysret":
      for (const slot of tools.values()) {
        if (slot.active?.id === m.id && slot.worker !== null) {
          slot.worker.postMessage({ type: "sysret", seq: m.seq, ok: m.ok, value: m.value, error: m.error });
        }
      }
      return;
  }
}

const decoder = new TextDecoder();
let buffer = "";
let scanned = 0;
for await (const chunk of Deno.stdin.readable) {
  buffer += decoder.decode(chunk, { stream: true });
  let nl: number;
  while ((nl = buffer.indexOf("\n", scanned)) >= 0) {
    const line = buffer.slice(0, nl);
    buffer = buffer.slice(nl + 1);
    scanned = 0;
    if (line.trim() === "") continue;
    try {
      handle(JSON.parse(line));
    } catch (err) {
      send({ type: "error", message: `bad frame from Cave: ${errorOf(err).message}` });
    }
  }
  scanned = buffer.length;
}
Deno.exit(0);
