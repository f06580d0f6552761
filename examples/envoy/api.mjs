// The sample API behind examples/envoy/envoy.yaml, for scripts/envoy-demo.sh: Node.js only,
// no dependencies.
//
// Answers every method and path with 200 and JSON that shows what got through the proxy:
//   {"method", "path", "identity": {every x-auth-* header}, "authorization_present"}
// so a request through Envoy shows the identity cedargate set and that the client's token
// did not arrive (the example strips it).
//
// Usage: node api.mjs [port] (or PORT=...); 0 or nothing picks an ephemeral port. Listens on
// 127.0.0.1 only. Prints exactly one line, `listening on <port>`, once bound; exits on SIGTERM
// and SIGINT.
import http from 'node:http';

const server = http.createServer((request, response) => {
  // The body is not needed; reading it lets keep-alive connections carry on.
  request.resume();
  request.on('end', () => {
    const identity = {};
    for (const [name, value] of Object.entries(request.headers)) {
      // Node gives header names in lower case.
      if (name.startsWith('x-auth-')) identity[name] = value;
    }
    const answer = {
      method: request.method,
      path: request.url,
      identity,
      authorization_present: 'authorization' in request.headers,
    };
    response.writeHead(200, { 'content-type': 'application/json' });
    response.end(`${JSON.stringify(answer)}\n`);
  });
});

const port = Number(process.argv[2] ?? process.env.PORT ?? 0);
server.on('error', (error) => {
  console.error(`listen failed: ${error.message}`);
  process.exit(1);
});
server.listen(port, '127.0.0.1', () => {
  console.log(`listening on ${server.address().port}`);
});

const stop = () => {
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
