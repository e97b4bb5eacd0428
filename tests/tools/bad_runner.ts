// A stand-in for main.ts that answers hello properly, then misbehaves on each call in turn:
// used to check that Cave handles malformed frames from the process.
const enc = new TextEncoder();
let token = "";
let calls = 0;
function line(text: string) { Deno.stdout.writeSync(enc.encode(text + "\n")); }
const decoder = new TextDecoder();
let buffer = "";
for await (const chunk of Deno.stdin.readable) {
  buffer += decoder.decode(chunk, { stream: true });
  let nl: number;
  while ((nl = buffer.indexOf("\n")) >= 0) {
    const m = JSON.parse(buffer.slice(0, nl));
    buffer = buffer.slice(nl + 1);
    if (m.type === "hello") {
      token = m.token;
      line(JSON.stringify({ t: token, type: "ready", deno: Deno.version.deno }));
    } else if (m.type === "call") {
      calls++;
      const mode = m.args.mode;
      if (mode === "garbage") line("this is not JSON {");
      else if (mode === "no-token") line(JSON.stringify({ type: "result", id: m.id, ok: true, value: 1 }));
      else if (mode === "wrong-token") line(JSON.stringify({ t: "0".repeat(32), type: "result", id: m.id, ok: true, value: 1 }));
      else if (mode === "array") line("[1, 2, 3]");
      else if (mode === "exit") Deno.exit(3);
      else line(JSON.stringify({ t: token, type: "result", id: m.id, ok: true, value: calls }));
    }
  }
}
