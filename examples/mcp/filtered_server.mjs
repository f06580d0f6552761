// An MCP server that lets cedargate decide both what a caller sees and what it may call, over
// cedargate's gRPC API: its `tools/list` answer is what `Authorizer/FilterTools` keeps for the
// caller's credential, and each `tools/call` goes through only when `Authorizer/Check` allows
// it (with the call's arguments). The client's Authorization header is passed on as received.
// Built on the official SDK's low-level `Server` (McpServer's built-in tools/list cannot be
// filtered per request, and its tool registration warns about the `/` in route-generated tool
// names), over Streamable HTTP in stateless mode with plain JSON responses, on POST /mcp at
// 127.0.0.1.
//
// Usage: node filtered_server.mjs, configured by the environment:
//   CEDARGATE_GRPC   cedargate's gRPC address, host:port (default 127.0.0.1:50051)
//   CEDARGATE_PROTO  the directory holding cedargate/v1/authorizer.proto (default: the
//                    repository's proto/, ../../proto from this script)
//   PORT             port to bind (default 0: an ephemeral one)
// Prints exactly one line, `listening on <port>`, once bound; exits on SIGTERM and SIGINT.
// Needs @modelcontextprotocol/sdk, @grpc/grpc-js and @grpc/proto-loader (tests/mcp/package.json
// pins them; scripts/install-test-deps.sh installs them into .tools/mcp and copies this script
// beside them).
//
// Tools: echo {text}, whoami {}, read_file {path}, delete_file {path},
//        GET_/user/profile, GET_/admin/users, GET_/public/info (route-generated, no arguments)
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { Server } from '@modelcontextprotocol/sdk/server/index.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { createMcpExpressApp } from '@modelcontextprotocol/sdk/server/express.js';
import { CallToolRequestSchema, ListToolsRequestSchema } from '@modelcontextprotocol/sdk/types.js';

const protoDir = process.env.CEDARGATE_PROTO ?? fileURLToPath(new URL('../../proto', import.meta.url));
const cedargateAddress = process.env.CEDARGATE_GRPC ?? '127.0.0.1:50051';

const text = (value) => ({ content: [{ type: 'text', text: value }] });
const toolError = (message) => ({ content: [{ type: 'text', text: message }], isError: true });
const noArguments = { type: 'object', properties: {} };
const stringArgument = (name) =>
  ({ type: 'object', properties: { [name]: { type: 'string' } }, required: [name] });

// Each tool as tools/list shows it, and what a call of it does (given cedargate's decision).
const ROUTES = ['GET_/user/profile', 'GET_/admin/users', 'GET_/public/info'];
const TOOLS = [
  { name: 'echo', description: 'Returns its text', inputSchema: stringArgument('text') },
  { name: 'whoami', description: 'Reports who cedargate says the caller is', inputSchema: noArguments },
  { name: 'read_file', description: 'Pretends to read a file', inputSchema: stringArgument('path') },
  { name: 'delete_file', description: 'Pretends to delete a file', inputSchema: stringArgument('path') },
  ...ROUTES.map((name) => ({
    name,
    description: `Route-generated tool for GET ${name.slice(4)}`,
    inputSchema: noArguments,
  })),
];
const run = {
  echo: (args) => text(args.text),
  whoami: (_args, decision) => text(JSON.stringify({ subject: decision.authInfo?.subject ?? null })),
  read_file: (args) => text(`read ${args.path}`),
  delete_file: (args) => text(`deleted ${args.path}`),
  ...Object.fromEntries(ROUTES.map((name) => [name, () => text(`route ${name}`)])),
};

// --- cedargate integration ---
const definition = protoLoader.loadSync('cedargate/v1/authorizer.proto', { includeDirs: [protoDir] });
const { Authorizer } = grpc.loadPackageDefinition(definition).cedargate.v1;
const cedargate = new Authorizer(cedargateAddress, grpc.credentials.createInsecure());
// One call as a promise: a gRPC error (UNAUTHENTICATED, UNAVAILABLE, ...) rejects it.
const ask = (method, request) =>
  promisify(cedargate[method]).call(cedargate, request, { deadline: Date.now() + 5000 });
// JSON as a google.protobuf.Struct, which proto-loader takes as {fields: {key: Value}}.
const toStruct = (object) =>
  ({ fields: Object.fromEntries(Object.entries(object).map(([k, v]) => [k, toValue(v)])) });
const toValue = (value) =>
  Array.isArray(value) ? { listValue: { values: value.map(toValue) } }
  : value === null ? { nullValue: 'NULL_VALUE' }
  : typeof value === 'object' ? { structValue: toStruct(value) }
  : typeof value === 'string' ? { stringValue: value }
  : typeof value === 'number' ? { numberValue: value }
  : { boolValue: value };
// tools/list: the tools cedargate keeps for this credential (it answers them unchanged, in order).
async function visibleTools(authorization) {
  const { entries } = await ask('filterTools', { authorization, entries: TOOLS.map(toStruct) });
  const kept = new Set(entries.map((entry) => entry.fields.name.stringValue));
  return TOOLS.filter((tool) => kept.has(tool.name));
}
// tools/call: the same service decides each call, with its arguments.
const checkCall = (authorization, name, args) =>
  ask('check', { authorization, target: { tool: { name, arguments: toStruct(args) } } });
// --- end ---

// The raw Authorization header the client sent ("" if none): the SDK hands every handler the
// HTTP request headers (lower-case names) in extra.requestInfo.headers.
const authorizationOf = (extra) => extra.requestInfo?.headers?.authorization ?? '';

// A failed cedargate call as the JSON-RPC error the client gets (the SDK answers a handler's
// throw with the error's code and message): a credential cedargate rejects says why; anything
// else (cedargate or a credential backend unreachable) is logged here, not shown.
const refusal = (error) => {
  if (error.code === grpc.status.UNAUTHENTICATED) {
    return Object.assign(new Error(`cedargate: ${error.details}`), { code: -32001 });
  }
  console.error('cedargate call failed:', error.message);
  return Object.assign(new Error('cedargate: authorization unavailable'), { code: -32603 });
};

function buildServer() {
  const server = new Server(
    { name: 'cedargate-filtered-mcp', version: '1.0.0' },
    { capabilities: { tools: {} } },
  );

  server.setRequestHandler(ListToolsRequestSchema, async (_request, extra) => {
    try {
      return { tools: await visibleTools(authorizationOf(extra)) };
    } catch (error) {
      throw refusal(error);
    }
  });

  // As McpServer does, a refused call, an unknown tool or bad arguments is a tool error result.
  server.setRequestHandler(CallToolRequestSchema, async (request, extra) => {
    const { name, arguments: args = {} } = request.params;
    let decision;
    try {
      decision = await checkCall(authorizationOf(extra), name, args);
    } catch (error) {
      throw refusal(error);
    }
    if (!decision.allowed) return toolError(`refused by cedargate: ${decision.error}: ${decision.reason}`);
    const tool = TOOLS.find((candidate) => candidate.name === name);
    if (!tool) return toolError(`Tool ${name} not found`);
    for (const required of tool.inputSchema.required ?? []) {
      if (typeof args[required] !== 'string') {
        return toolError(`Invalid arguments for tool ${name}: ${required} must be a string`);
      }
    }
    return run[name](args, decision);
  });

  return server;
}

const app = createMcpExpressApp({ host: '127.0.0.1' });

// Stateless mode: a fresh server and transport per request, as the SDK's stateless example does.
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

const port = Number(process.env.PORT ?? 0);
const listener = app.listen(port, '127.0.0.1', (error) => {
  if (error) {
    console.error('listen failed:', error);
    process.exit(1);
  }
  console.log(`listening on ${listener.address().port}`);
});

const stop = () => {
  cedargate.close();
  listener.close(() => process.exit(0));
  listener.closeAllConnections();
  // Keep-alive sockets or a stuck handler must not hold the exit up.
  setTimeout(() => process.exit(0), 2000).unref();
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
