// The first code in every tool's Web Worker (Cave sends it to main.ts, which starts each worker
// from it with `permissions: "none"`). It takes away the worker's handles on the process's stdio,
// routes console output to Cave as log messages, builds the `cave` syscall object, then imports
// the tool's TypeScript from a data: URL and runs `run(args, cave)` once per call.

// deno-lint-ignore-file no-explicit-any
const post: (m: any) => void = self.postMessage.bind(self);
for (const key of ["stdin", "stdout", "stderr"]) {
  try {
    Object.defineProperty(Deno, key, { value: undefined, configurable: false, writable: false });
  } catch {
    // already gone
  }
}

let current: number | null = null;
let seq = 0;
const pending = new Map<number, { resolve: (v: any) => void; reject: (e: Error) => void }>();

function show(value: unknown): string {
  return typeof value === "string" ? value : Deno.inspect(value, { depth: 4, colors: false });
}

for (const [method, stream] of [
  ["log", "stdout"], ["info", "stdout"], ["debug", "stdout"], ["warn", "stderr"], ["error", "stderr"],
]) {
  (console as any)[method] = (...args: unknown[]) =>
    post({ type: "log", stream, text: args.map(show).join(" ") + "\n" });
}

function syscall(op: string, args: Record<string, unknown>): Promise<any> {
  if (current === null) {
    return Promise.reject(new Error(`cave.${op}: syscalls work only while a call of this tool runs`));
  }
  const n = ++seq;
  return new Promise((resolve, reject) => {
    pending.set(n, { resolve, reject });
    post({ type: "sys", seq: n, op, args });
  });
}

function toBase64(bytes: Uint8Array): string {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

function fromBase64(text: string): Uint8Array {
  const s = atob(text);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

const cave = Object.freeze({
  fs: Object.freeze({
    read: (path: string, opts: { binary?: boolean } = {}) =>
      syscall("fs.read", { path, binary: !!opts.binary }).then((v) => (opts.binary ? fromBase64(v) : v)),
    write: (path: string, data: string | Uint8Array, opts: { append?: boolean } = {}) =>
      syscall("fs.write", typeof data === "string"
        ? { path, text: data, append: !!opts.append }
        : { path, b64: toBase64(data), append: !!opts.append }),
    list: (path = ".") => syscall("fs.list", { path }),
  }),
  net: Object.freeze({
    fetch: (url: string, opts: { method?: string; headers?: Record<string, string>; body?: string; json?: unknown; timeout?: number; maxBytes?: number } = {}) =>
      syscall("net.fetch", {
        url, method: opts.method ?? "GET", headers: opts.headers ?? {},
        body: opts.json !== undefined ? JSON.stringify(opts.json) : opts.body ?? null,
        json: opts.json !== undefined, timeout: opts.timeout ?? 30, max_bytes: opts.maxBytes ?? 20_000_000,
      }).then((r) => {
        const bytes = fromBase64(r.b64);
        const text = new TextDecoder().decode(bytes);
        return Object.freeze({
          url: r.url, status: r.status, ok: r.status >= 200 && r.status < 400, headers: r.headers,
          truncated: r.truncated, bytes, text: () => text, json: () => JSON.parse(text),
        });
      }),
  }),
  env: Object.freeze({ get: (name: string) => syscall("env.get", { name }) }),
  shell: Object.freeze({
    run: (argv: string[], opts: { cwd?: string; timeout?: number; input?: string } = {}) =>
      syscall("shell.run", { argv, cwd: opts.cwd ?? null, timeout: opts.timeout ?? 60, input: opts.input ?? null }),
  }),
  human: Object.freeze({
    ask: (question: string, opts: { timeout?: number } = {}) =>
      syscall("human.ask", { question, timeout: opts.timeout ?? null }),
  }),
});

function errorOf(err: unknown): { name: string; message: string; stack: string } {
  if (err instanceof Error) return { name: err.name, message: err.message, stack: String(err.stack ?? "") };
  return { name: "Error", message: show(err), stack: "" };
}

let mod: any = null;

self.onmessage = async (e: MessageEvent) => {
  const m = e.data;
  if (m.type === "load") {
    try {
      mod = await import("data:application/typescript;base64," + m.b64);
      if (typeof mod.run !== "function") {
        throw new Error("the tool must export `async function run(args, cave)`");
      }
      post({ type: "loaded", error: null });
    } catch (err) {
      post({ type: "loaded", error: `the tool did not load: ${errorOf(err).message}` });
    }
  } else if (m.type === "call") {
    current = m.id;
    try {
      const value = await mod.run(m.args, cave);
      const json = JSON.stringify(value === undefined ? null : value);
      if (json === undefined) throw new TypeError("the tool returned a value JSON cannot represent");
      if (json.length > m.max_result) {
        throw new RangeError(`the tool's result is ${json.length} characters of JSON, over the limit of ${m.max_result}`);
      }
      post({ type: "result", id: m.id, ok: true, json });
    } catch (err) {
      post({ type: "result", id: m.id, ok: false, error: errorOf(err) });
    } finally {
      current = null;
    }
  } else if (m.type === "sysret") {
    const p = pending.get(m.seq);
    if (p === undefined) return;
    pending.delete(m.seq);
    if (m.ok) p.resolve(m.value);
    else {
      const err = new Error(String(m.error?.message ?? "refused"));
      err.name = String(m.error?.name ?? "Error");
      p.reject(err);
    }
  }
};
