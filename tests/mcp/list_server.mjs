// A real MCP server for cedargate's list/pagination/session tests and benchmarks, built on the
// official SDK's low-level `Server` (McpServer's built-in list handlers do not paginate, and its
// tool registration warns about the `/` in route-generated tool names).
//
// Streamable HTTP on POST /mcp at 127.0.0.1. Prints exactly one line, `listening on <port>`,
// once bound; exits on SIGTERM/SIGINT. scripts/install-test-deps.sh copies it into .tools/mcp/,
// beside the SDK it imports.
//
// Usage: node list_server.mjs [--port N] [--sse] [--stateful [--resumable]] [--page-size K] [--bulk N] [--malformed]
//   --port N       port to bind (default 0: an ephemeral one)
//   --sse          answer POSTs as text/event-stream (default: application/json)
//   --stateful     sessions (mcp-session-id); GET /mcp opens the session's SSE stream, DELETE /mcp
//                  ends it; an unknown session id is a 404 JSON-RPC error. Default: stateless,
//                  a fresh server and transport per POST, GET/DELETE answered 405.
//   --resumable    with --stateful: the SDK's in-memory event store, so a GET with Last-Event-ID
//                  replays a stream's events (its list answers included) from that event on
//   --page-size K  tools/list, prompts/list, resources/list and resources/templates/list return at
//                  most K entries a page, with an opaque nextCursor (default: one page)
//   --bulk N       N more tools, bulk_0 ... bulk_{N-1} {text}, each returning `bulk i`
//   --malformed    tools/list (only) is answered 200, application/json, with truncated JSON
//
// Tools:     echo {text}, whoami {}, read_file {path}, delete_file {path},
//            GET_/user/profile, GET_/admin/users, GET_/public/info (no arguments; `route <name>`)
// Prompts:   greeting {name}, admin_report {}
// Resources: file:///readme (readme), file:///secrets (secrets)
// Template:  file:///docs/{name} (docs)
import { InMemoryEventStore } from '@modelcontextprotocol/sdk/examples/shared/inMemoryEventStore.js';
import { randomUUID } from 'node:crypto';
import { Server } from '@modelcontextprotocol/sdk/server/index.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { createMcpExpressApp } from '@modelcontextprotocol/sdk/server/express.js';
import {
  CallToolRequestSchema,
  GetPromptRequestSchema,
  isInitializeRequest,
  ListPromptsRequestSchema,
  ListResourcesRequestSchema,
  ListResourceTemplatesRequestSchema,
  ListToolsRequestSchema,
  ReadResourceRequestSchema,
} from '@modelcontextprotocol/sdk/types.js';

const usage =
  'usage: node list_server.mjs [--port N] [--sse] [--stateful [--resumable]] [--page-size K] [--bulk N] [--malformed]';

function fail(message) {
  console.error(message);
  process.exit(1);
}

// --- Options -------------------------------------------------------------------------------------

const options = { port: 0, sse: false, stateful: false, resumable: false, pageSize: Infinity, bulk: 0, malformed: false };
{
  const args = process.argv.slice(2);
  const count = (flag, value, min) => {
    if (value === undefined || !/^\d+$/.test(value) || Number(value) < min) fail(`${flag} needs an integer >= ${min}\n${usage}`);
    return Number(value);
  };
  for (let i = 0; i < args.length; i += 1) {
    const flag = args[i];
    switch (flag) {
      case '--port': options.port = count(flag, args[(i += 1)], 0); break;
      case '--sse': options.sse = true; break;
      case '--stateful': options.stateful = true; break;
      case '--resumable': options.resumable = true; break;
      case '--page-size': options.pageSize = count(flag, args[(i += 1)], 1); break;
      case '--bulk': options.bulk = count(flag, args[(i += 1)], 0); break;
      case '--malformed': options.malformed = true; break;
      default: fail(`unknown argument: ${flag}\n${usage}`);
    }
  }
}

// --- Catalogue -----------------------------------------------------------------------------------

// A JSON-RPC error for the SDK to send: it answers a handler's throw with the error's code and
// message (an McpError would prefix the message with `MCP error <code>: ` on the wire, and the
// client prefixes it again).
const invalidParams = (message) => Object.assign(new Error(message), { code: -32602 });

const text = (value) => ({ content: [{ type: 'text', text: value }] });
const toolError = (message) => ({ content: [{ type: 'text', text: message }], isError: true });

const noArguments = { type: 'object', properties: {} };
const stringArgument = (name) => ({ type: 'object', properties: { [name]: { type: 'string' } }, required: [name] });

// Each tool: its tools/list entry, the string arguments it requires, and its handler.
const tools = [
  { name: 'echo', description: 'Returns its text', inputSchema: stringArgument('text'), run: (args) => text(args.text) },
  {
    name: 'whoami',
    description: 'Reports the x-auth-* headers and whether an Authorization header arrived',
    inputSchema: noArguments,
    // The SDK hands every handler the HTTP request headers (lower-case names) in
    // extra.requestInfo.headers; this shows what the proxy in front of us forwarded.
    run: (_args, extra) => {
      const received = extra.requestInfo?.headers ?? {};
      const headers = {};
      for (const [name, value] of Object.entries(received)) {
        if (name.toLowerCase().startsWith('x-auth-')) headers[name.toLowerCase()] = value;
      }
      const authorization_present = Object.keys(received).some((n) => n.toLowerCase() === 'authorization');
      return text(JSON.stringify({ headers, authorization_present }));
    },
  },
  { name: 'read_file', description: 'Pretends to read a file', inputSchema: stringArgument('path'), run: (args) => text(`read ${args.path}`) },
  { name: 'delete_file', description: 'Pretends to delete a file', inputSchema: stringArgument('path'), run: (args) => text(`deleted ${args.path}`) },
  ...['GET_/user/profile', 'GET_/admin/users', 'GET_/public/info'].map((name) => ({
    name,
    description: `Route-generated tool for ${name.slice(4)}`,
    inputSchema: noArguments,
    run: () => text(`route ${name}`),
  })),
  ...Array.from({ length: options.bulk }, (_, i) => ({
    name: `bulk_${i}`,
    description: `Bulk tool ${i}`,
    inputSchema: { type: 'object', properties: { text: { type: 'string' } } },
    run: () => text(`bulk ${i}`),
  })),
];
const toolsByName = new Map(tools.map((tool) => [tool.name, tool]));

const prompts = [
  {
    name: 'greeting',
    description: 'Greets someone',
    arguments: [{ name: 'name', description: 'Who to greet', required: true }],
    get: (args) => ({ messages: [{ role: 'user', content: { type: 'text', text: `Please greet ${args.name}.` } }] }),
  },
  {
    name: 'admin_report',
    description: 'Asks for an administrative report',
    arguments: [],
    get: () => ({ messages: [{ role: 'user', content: { type: 'text', text: 'Please write the admin report.' } }] }),
  },
];
const promptsByName = new Map(prompts.map((prompt) => [prompt.name, prompt]));

const resources = [
  { uri: 'file:///readme', name: 'readme', description: 'A small text file', mimeType: 'text/plain', text: 'This is the readme.' },
  { uri: 'file:///secrets', name: 'secrets', description: 'A file nobody should read', mimeType: 'text/plain', text: 'The secrets.' },
];
const resourcesByUri = new Map(resources.map((resource) => [resource.uri, resource]));

const templates = [
  { uriTemplate: 'file:///docs/{name}', name: 'docs', description: 'A document by name', mimeType: 'text/plain' },
];
const docsUri = /^file:\/\/\/docs\/([^/?#]+)$/;

// --- Pagination ----------------------------------------------------------------------------------

// The cursor is opaque to clients: base64 of the offset of the page's first entry.
const encodeCursor = (offset) => Buffer.from(`offset:${offset}`).toString('base64');
function decodeCursor(cursor, length) {
  const match = /^offset:(\d+)$/.exec(Buffer.from(cursor, 'base64').toString('utf8'));
  const offset = match ? Number(match[1]) : NaN;
  if (!Number.isSafeInteger(offset) || offset <= 0 || offset >= length) {
    throw invalidParams(`Invalid cursor: ${cursor}`);
  }
  return offset;
}

// One page of `items` (mapped through `entry`) as `{ [key]: [...], nextCursor? }`.
function page(key, items, request, entry) {
  const cursor = request.params?.cursor;
  const offset = cursor === undefined ? 0 : decodeCursor(cursor, items.length);
  const end = Math.min(items.length, offset + options.pageSize);
  const result = { [key]: items.slice(offset, end).map(entry) };
  if (end < items.length) result.nextCursor = encodeCursor(end);
  return result;
}

// --- Server --------------------------------------------------------------------------------------

function buildServer() {
  const server = new Server(
    { name: 'cedargate-test-list-mcp', version: '1.0.0' },
    { capabilities: { tools: {}, prompts: {}, resources: {} } },
  );

  server.setRequestHandler(ListToolsRequestSchema, (request) =>
    page('tools', tools, request, ({ name, description, inputSchema }) => ({ name, description, inputSchema })),
  );
  // As McpServer does: an unknown tool or bad arguments is a tool error result, not a JSON-RPC error.
  server.setRequestHandler(CallToolRequestSchema, async (request, extra) => {
    const { name, arguments: args = {} } = request.params;
    const tool = toolsByName.get(name);
    if (!tool) return toolError(`Tool ${name} not found`);
    for (const required of tool.inputSchema.required ?? []) {
      if (typeof args[required] !== 'string') {
        return toolError(`Invalid arguments for tool ${name}: ${required} must be a string`);
      }
    }
    return tool.run(args, extra);
  });

  server.setRequestHandler(ListPromptsRequestSchema, (request) =>
    page('prompts', prompts, request, ({ name, description, arguments: promptArguments }) => ({
      name,
      description,
      arguments: promptArguments,
    })),
  );
  server.setRequestHandler(GetPromptRequestSchema, async (request) => {
    const { name, arguments: args = {} } = request.params;
    const prompt = promptsByName.get(name);
    if (!prompt) throw invalidParams(`Prompt ${name} not found`);
    for (const { name: required } of prompt.arguments.filter((argument) => argument.required)) {
      if (typeof args[required] !== 'string') {
        throw invalidParams(`Invalid arguments for prompt ${name}: ${required} is required`);
      }
    }
    return prompt.get(args);
  });

  server.setRequestHandler(ListResourcesRequestSchema, (request) =>
    page('resources', resources, request, ({ uri, name, description, mimeType }) => ({ uri, name, description, mimeType })),
  );
  server.setRequestHandler(ListResourceTemplatesRequestSchema, (request) =>
    page('resourceTemplates', templates, request, (template) => ({ ...template })),
  );
  server.setRequestHandler(ReadResourceRequestSchema, async (request) => {
    const { uri } = request.params;
    const resource = resourcesByUri.get(uri);
    if (resource) return { contents: [{ uri, mimeType: resource.mimeType, text: resource.text }] };
    const doc = docsUri.exec(uri);
    if (doc) return { contents: [{ uri, mimeType: 'text/plain', text: `docs ${decodeURIComponent(doc[1])}` }] };
    throw invalidParams(`Resource ${uri} not found`);
  });

  return server;
}

// --- HTTP ----------------------------------------------------------------------------------------

const jsonRpcError = (res, status, code, message) => {
  res.status(status).json({ jsonrpc: '2.0', error: { code, message }, id: null });
};

const app = createMcpExpressApp({ host: '127.0.0.1' });

// --malformed: tools/list is answered before the SDK sees it, with JSON cut off mid-way.
if (options.malformed) {
  app.post('/mcp', (req, res, next) => {
    const body = req.body;
    if (body && !Array.isArray(body) && body.method === 'tools/list') {
      res.status(200);
      res.setHeader('Content-Type', 'application/json');
      res.end(`{"jsonrpc":"2.0","id":${JSON.stringify(body.id ?? null)},"result":{"tools":[{"name":"echo"`);
      return;
    }
    next();
  });
}

const handleFailure = (res, error) => {
  console.error('mcp request failed:', error);
  if (!res.headersSent) jsonRpcError(res, 500, -32603, 'Internal server error');
};

// session id -> transport (--stateful only)
const sessions = new Map();

if (options.stateful) {
  // As the SDK's simpleStreamableHttp example does.
  app.post('/mcp', async (req, res) => {
    const sessionId = req.headers['mcp-session-id'];
    try {
      if (sessionId) {
        const transport = sessions.get(sessionId);
        if (!transport) return jsonRpcError(res, 404, -32001, 'Session not found');
        await transport.handleRequest(req, res, req.body);
        return;
      }
      if (!isInitializeRequest(req.body)) {
        return jsonRpcError(res, 400, -32000, 'Bad Request: No valid session ID provided');
      }
      const transport = new StreamableHTTPServerTransport({
        sessionIdGenerator: () => randomUUID(),
        enableJsonResponse: !options.sse,
        eventStore: options.resumable ? new InMemoryEventStore() : undefined,
        onsessioninitialized: (id) => {
          sessions.set(id, transport);
        },
      });
      transport.onclose = () => {
        if (transport.sessionId) sessions.delete(transport.sessionId);
      };
      const server = buildServer();
      await server.connect(transport);
      await transport.handleRequest(req, res, req.body);
    } catch (error) {
      handleFailure(res, error);
    }
  });

  // GET opens the session's standalone SSE stream; DELETE ends the session.
  const sessionRequest = async (req, res) => {
    const sessionId = req.headers['mcp-session-id'];
    if (!sessionId) return jsonRpcError(res, 400, -32000, 'Bad Request: Missing session ID');
    const transport = sessions.get(sessionId);
    if (!transport) return jsonRpcError(res, 404, -32001, 'Session not found');
    try {
      await transport.handleRequest(req, res);
    } catch (error) {
      handleFailure(res, error);
    }
  };
  app.get('/mcp', sessionRequest);
  app.delete('/mcp', sessionRequest);
} else {
  // Stateless: a fresh server and transport per request, as the SDK's stateless example does.
  app.post('/mcp', async (req, res) => {
    const server = buildServer();
    const transport = new StreamableHTTPServerTransport({
      sessionIdGenerator: undefined,
      enableJsonResponse: !options.sse,
    });
    res.on('close', () => {
      transport.close();
      server.close();
    });
    try {
      await server.connect(transport);
      await transport.handleRequest(req, res, req.body);
    } catch (error) {
      handleFailure(res, error);
    }
  });

  // Stateless: no SSE stream to GET and no session to DELETE.
  const notAllowed = (_req, res) => jsonRpcError(res, 405, -32000, 'Method not allowed.');
  app.get('/mcp', notAllowed);
  app.delete('/mcp', notAllowed);
}

const listener = app.listen(options.port, '127.0.0.1', (error) => {
  if (error) {
    console.error('listen failed:', error);
    process.exit(1);
  }
  console.log(`listening on ${listener.address().port}`);
});

const stop = () => {
  for (const transport of sessions.values()) transport.close().catch(() => {});
  listener.close(() => process.exit(0));
  listener.closeAllConnections();
  // Keep-alive sockets, open SSE streams or a stuck handler must not hold the test up.
  setTimeout(() => process.exit(0), 2000).unref();
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
