// A real MCP client, the official SDK's `Client` over Streamable HTTP, for trying the Envoy
// walkthrough (scripts/envoy-demo.sh prints how). scripts/install-test-deps.sh copies it into
// .tools/mcp/, beside the SDK it imports: Node resolves packages from the script's own folder.
//
// Usage: node client.mjs [-H 'Name: value']... <url> [tool [arguments-json]]
//   -H adds a request header to every request, e.g. -H 'Authorization: Bearer user-token-123'.
//   With a tool: initializes, calls it with the arguments (default {}), prints each text item of
//   the result on stdout and exits 0; a tool error, or a request the server (or cedargate in
//   front of it) refused, is printed on stderr and exits 1.
//   Without a tool: prints the names of the tools the server lists.
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport, StreamableHTTPError } from '@modelcontextprotocol/sdk/client/streamableHttp.js';

import { fail, parseArgs } from './cli.mjs';

const usage = "usage: node client.mjs [-H 'Name: value']... <url> [tool [arguments-json]]";

const { headers, positional } = parseArgs(process.argv.slice(2), usage);
const [url, tool, argumentsJson = '{}'] = positional;
if (!url || positional.length > 3) fail(usage);
let toolArguments;
try {
  toolArguments = JSON.parse(argumentsJson);
} catch (error) {
  fail(`arguments are not JSON: ${error.message}`);
}

// What a refusal said: cedargate answers a denied JSON-RPC request with an HTTP 401/403 whose
// body is a JSON-RPC error; the SDK puts that body into the error's message.
function refusal(error) {
  if (!(error instanceof StreamableHTTPError) || typeof error.code !== 'number' || error.code < 400) {
    return `error: ${error.message}`;
  }
  const body = error.message.slice(error.message.indexOf('{'));
  let reason = body;
  try {
    reason = JSON.parse(body).error?.message ?? body;
  } catch {
    // Not JSON (a proxy's own page): show it as it came.
  }
  return `refused: HTTP ${error.code}: ${reason}`;
}

const client = new Client({ name: 'cedargate-demo-client', version: '1.0.0' });
const transport = new StreamableHTTPClientTransport(new URL(url), { requestInit: { headers } });
let exitCode = 0;
try {
  await client.connect(transport);
  if (tool === undefined) {
    const { tools } = await client.listTools();
    for (const { name } of tools) console.log(name);
  } else {
    const result = await client.callTool({ name: tool, arguments: toolArguments });
    const texts = (result.content ?? []).filter((item) => item.type === 'text').map((item) => item.text);
    if (result.isError) {
      console.error(`tool error: ${texts.join('\n')}`);
      exitCode = 1;
    } else {
      for (const text of texts) console.log(text);
    }
  }
} catch (error) {
  console.error(refusal(error));
  exitCode = 1;
} finally {
  await client.close().catch(() => {});
}
process.exit(exitCode);
