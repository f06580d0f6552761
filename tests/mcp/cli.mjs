// What the test clients (client.mjs, lister.mjs) share: their command line, repeated `-H`
// headers and positional arguments, and failing with a message. Copied beside them into
// .tools/mcp/ by scripts/install-test-deps.sh.

// Prints `message` on stderr and exits 1.
export function fail(message) {
  console.error(message);
  process.exit(1);
}

// `argv` read as `[-H 'Name: value']... positional...`: the headers to send on every request
// and the rest in order. A `-H` without a value fails with `usage`; a header without a name
// fails saying so.
export function parseArgs(argv, usage) {
  const headers = {};
  const positional = [];
  for (let i = 0; i < argv.length; i += 1) {
    if (argv[i] === '-H' || argv[i] === '--header') {
      const header = argv[(i += 1)] ?? fail(usage);
      const colon = header.indexOf(':');
      if (colon <= 0) fail(`not a header: ${header}`);
      headers[header.slice(0, colon).trim()] = header.slice(colon + 1).trim();
    } else {
      positional.push(argv[i]);
    }
  }
  return { headers, positional };
}
