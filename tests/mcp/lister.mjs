// A real MCP client, the official SDK's `Client` over Streamable HTTP, that lists everything a
// server offers (following nextCursor through every page) and then makes the calls it is given.
// scripts/install-test-deps.sh copies it into .tools/mcp/, beside the SDK it imports.
//
// Usage: node lister.mjs [-H 'Name: value']... <url> [calls-json]
//   -H adds a request header to every request, e.g. -H 'Authorization: Bearer user-token-123'.
//   calls-json: a JSON array of {"kind": "tool"|"prompt"|"resource", "name": ..., "arguments": {...}}
//   (for a resource, name is its URI; arguments are ignored).
//
// Prints one line of JSON on stdout and exits 0:
//   {"sessionId": <id or null>, "tools": [names], "prompts": [names], "resources": [uris],
//    "templates": [uriTemplates], "listErrors": {"tools"?: msg, "prompts"?: msg, "resources"?: msg,
//    "templates"?: msg}, "calls": [{"kind", "name", "result"}]}
// where a list that failed is recorded in listErrors (its array holds what arrived before the
// failure) and each call's result is "ok", "refused:<HTTP status>" (the server or a proxy in front
// answered an HTTP error), or "error:<message>" (a JSON-RPC error, a tool error or anything else).
// If connecting (initialize) fails it prints {"connectError": "<message>"} instead, still exit 0.
// Exits 1 only on a usage error.
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport, StreamableHTTPError } from '@modelcontextprotocol/sdk/client/streamableHttp.js';

import { fail, parseArgs } from './cli.mjs';

const usage = "usage: node lister.mjs [-H 'Name: value']... <url> [calls-json]";

const { headers, positional } = parseArgs(process.argv.slice(2), usage);
const [url, callsJson] = positional;
if (!url || positional.length > 2) fail(usage);
let endpoint;
try {
  endpoint = new URL(url);
} catch (error) {
  fail(`not a URL: ${url}`);
}
let calls = [];
if (callsJson !== undefined) {
  try {
    calls = JSON.parse(callsJson);
  } catch (error) {
    fail(`calls are not JSON: ${error.message}`);
  }
  if (!Array.isArray(calls)) fail('calls must be a JSON array');
  for (const call of calls) {
    if (!call || !['tool', 'prompt', 'resource'].includes(call.kind) || typeof call.name !== 'string') {
      fail(`not a call ({"kind": "tool"|"prompt"|"resource", "name": ...}): ${JSON.stringify(call)}`);
    }
  }
}

// An HTTP refusal (the SDK's StreamableHTTPError carries the HTTP status as .code), or not.
const httpStatus = (error) =>
  error instanceof StreamableHTTPError && typeof error.code === 'number' && error.code >= 400 ? error.code : undefined;
const outcome = (error) => {
  const status = httpStatus(error);
  return status === undefined ? `error:${error?.message ?? String(error)}` : `refused:${status}`;
};

const print = (value) => console.log(JSON.stringify(value));

const client = new Client({ name: 'cedargate-test-lister', version: '1.0.0' });
const transport = new StreamableHTTPClientTransport(endpoint, { requestInit: { headers } });

try {
  await client.connect(transport);
} catch (error) {
  const status = httpStatus(error);
  // fetch's own failures (connection refused, ...) say why only in their cause.
  const cause = error.cause?.code ?? error.cause?.message;
  const message =
    status !== undefined ? `HTTP ${status}: ${error.message}` : cause ? `${error.message} (${cause})` : error.message;
  console.error(`connect failed: ${message}`);
  print({ connectError: message });
  await client.close().catch(() => {});
  process.exit(0);
}

const report = {
  sessionId: transport.sessionId ?? null,
  tools: [],
  prompts: [],
  resources: [],
  templates: [],
  listErrors: {},
  calls: [],
};

// Every page of one list, into report[key]; a failure is recorded in listErrors[key].
async function listAll(key, list, field, pick) {
  let cursor;
  const seen = new Set();
  try {
    do {
      const result = await list(cursor === undefined ? {} : { cursor });
      for (const entry of result[field] ?? []) report[key].push(pick(entry));
      cursor = result.nextCursor;
      if (cursor !== undefined && seen.has(cursor)) throw new Error(`nextCursor repeats: ${cursor}`);
      seen.add(cursor);
    } while (cursor !== undefined);
  } catch (error) {
    const status = httpStatus(error);
    report.listErrors[key] = status === undefined ? error.message : `HTTP ${status}: ${error.message}`;
  }
}

await listAll('tools', (params) => client.listTools(params), 'tools', (tool) => tool.name);
await listAll('prompts', (params) => client.listPrompts(params), 'prompts', (prompt) => prompt.name);
await listAll('resources', (params) => client.listResources(params), 'resources', (resource) => resource.uri);
await listAll(
  'templates',
  (params) => client.listResourceTemplates(params),
  'resourceTemplates',
  (template) => template.uriTemplate,
);

for (const { kind, name, arguments: callArguments = {} } of calls) {
  let result = 'ok';
  try {
    if (kind === 'tool') {
      const toolResult = await client.callTool({ name, arguments: callArguments });
      if (toolResult.isError) {
        const texts = (toolResult.content ?? []).filter((item) => item.type === 'text').map((item) => item.text);
        result = `error:${texts.join('\n')}`;
      }
    } else if (kind === 'prompt') {
      await client.getPrompt({ name, arguments: callArguments });
    } else {
      await client.readResource({ uri: name });
    }
  } catch (error) {
    result = outcome(error);
  }
  report.calls.push({ kind, name, result });
}

await client.close().catch(() => {});
print(report);
process.exit(0);
