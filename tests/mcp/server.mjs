// A real MCP server for cedargate's Envoy tests, built on the official SDK.
//
// Streamable HTTP in stateless mode (no session id) with plain JSON responses (no SSE), on
// POST /mcp at 127.0.0.1. Usage: node server.mjs [port] (or PORT=...); 0 or nothing picks an
// ephemeral port. Prints exactly one line, `listening on <port>`, once bound; exits on SIGTERM.
//
// Tools:  echo {text}, read_file {path}, delete_file {path}, whoami {}
// Prompt: greeting {name}
// Resource: file:///readme
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { createMcpExpressApp } from '@modelcontextprotocol/sdk/server/express.js';
import * as z from 'zod/v4';

const text = (value) => ({ content: [{ type: 'text', text: value }] });

// Stateless mode: a fresh server and transport per request, as the SDK's stateless example does.
function buildServer() {
  const server = new McpServer({ name: 'cedargate-test-mcp', version: '1.0.0' });

  server.registerTool(
    'echo',
    { description: 'Returns its text', inputSchema: { text: z.string() } },
    async ({ text: value }) => text(value),
  );
  server.registerTool(
    'read_file',
    { description: 'Pretends to read a file', inputSchema: { path: z.string() } },
    async ({ path }) => text(`read ${path}`),
  );
  server.registerTool(
    'delete_file',
    { description: 'Pretends to delete a file', inputSchema: { path: z.string() } },
    async ({ path }) => text(`deleted ${path}`),
  );
  // The SDK hands every handler the HTTP request headers (lower-case names) in
  // extra.requestInfo.headers; this shows what the proxy in front of us forwarded.
  server.registerTool(
    'whoami',
    { description: 'Reports the x-auth-* headers and whether an Authorization header arrived' },
    async (extra) => {
      const received = extra.requestInfo?.headers ?? {};
      const headers = {};
      for (const [name, value] of Object.entries(received)) {
        if (name.toLowerCase().startsWith('x-auth-')) headers[name.toLowerCase()] = value;
      }
      const authorization_present = Object.keys(received).some((n) => n.toLowerCase() === 'authorization');
      return text(JSON.stringify({ headers, authorization_present }));
    },
  );

  server.registerPrompt(
    'greeting',
    { description: 'Greets someone', argsSchema: { name: z.string() } },
    async ({ name }) => ({
      messages: [{ role: 'user', content: { type: 'text', text: `Please greet ${name}.` } }],
    }),
  );

  server.registerResource(
    'readme',
    'file:///readme',
    { description: 'A small text file', mimeType: 'text/plain' },
    async (uri) => ({ contents: [{ uri: uri.href, mimeType: 'text/plain', text: 'This is the readme.' }] }),
  );
  return server;
}

const app = createMcpExpressApp({ host: '127.0.0.1' });

app.post('/mcp', async (req, res) => {
  const server = buildServer();
  const transport = new StreamableHTTPServerTransport({
    sessionIdGenerator: undefined,
    enableJsonResponse: true,
  });
  res.on('close', () => {
    transport.close();
    server.close();
  });
  try {
    await server.connect(transport);
    await transport.handleRequest(req, res, req.body);
  } catch (error) {
    console.error('mcp request failed:', error);
    if (!res.headersSent) {
      const error = { code: -32603, message: 'Internal server error' };
      res.status(500).json({ jsonrpc: '2.0', error, id: null });
    }
  }
});

// Stateless: no SSE stream to GET and no session to DELETE.
const notAllowed = (_req, res) => {
  res.status(405).json({ jsonrpc: '2.0', error: { code: -32000, message: 'Method not allowed.' }, id: null });
};
app.get('/mcp', notAllowed);
app.delete('/mcp', notAllowed);

const port = Number(process.argv[2] ?? process.env.PORT ?? 0);
const listener = app.listen(port, '127.0.0.1', (error) => {
  if (error) {
    console.error('listen failed:', error);
    process.exit(1);
  }
  console.log(`listening on ${listener.address().port}`);
});

const stop = () => {
  listener.close(() => process.exit(0));
  listener.closeAllConnections();
  // Keep-alive sockets or a stuck handler must not hold the test up.
  setTimeout(() => process.exit(0), 2000).unref();
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
