// The JavaScript example: a WASI 0.2 wasi:http/proxy component built by componentize-js (StarlingMonkey),
// answering the same routes as the Python example.

function route(request) {
  if (request.method !== "GET") return [405, "GET only\n"];
  const parts = new URL(request.url).pathname.replace(/^\/+|\/+$/g, "").split("/");
  if (parts.length === 1 && parts[0] === "") return [200, "hello from javascript\n"];
  if (parts.length === 1 && parts[0] === "log") {
    // Goes to the guest's stdout, which the host forwards to the container log.
    console.log("javascript guest: a log line");
    return [200, "logged\n"];
  }
  if (parts.length === 2 && /^\d+$/.test(parts[1])) {
    const amount = Number(parts[1]);
    if (parts[0] === "alloc") {
      // Filling touches every page, so the guest's memory really grows by this much.
      const held = new Uint8Array(amount << 20).fill(1);
      return [200, `allocated ${held.length >> 20} MiB\n`];
    }
    if (parts[0] === "burn") {
      const end = Date.now() + amount;
      let spins = 0;
      while (Date.now() < end) spins++;
      return [200, `burned ${amount} ms\n`];
    }
  }
  return [404, "no such route\n"];
}

addEventListener("fetch", (event) => {
  const [status, body] = route(event.request);
  event.respondWith(new Response(body, { status, headers: { "content-type": "text/plain" } }));
});
