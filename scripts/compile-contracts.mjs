#!/usr/bin/env node
// Compiles Solidity sources with solc-js from node_modules (offline) and prints, or writes with
// `--out FILE`, one JSON object: {"solcVersion", "contracts": {NAME: {"abi", "bytecode"}}}.
//
//   node scripts/compile-contracts.mjs [--out FILE] [SOURCE.sol ...]   (default: contracts/*.sol)
//
// The Rust chain harness (crates/turnpike/tests/support/chain.rs) runs this on first use and caches
// the result under the cargo target directory, keyed by the sources' hash.
import { readFileSync, readdirSync, writeFileSync, mkdirSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import solc from 'solc';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
let out;
const files = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--out') out = args[++i];
  else files.push(args[i]);
}
if (files.length === 0) {
  const dir = join(root, 'contracts');
  for (const f of readdirSync(dir).sort()) if (f.endsWith('.sol')) files.push(join(dir, f));
}

const sources = {};
for (const f of files) sources[basename(f)] = { content: readFileSync(f, 'utf8') };
const input = {
  language: 'Solidity',
  sources,
  settings: {
    // cancun: runs on anvil's default hardfork and on every chain the evm rail targets today.
    evmVersion: 'cancun',
    optimizer: { enabled: true, runs: 200 },
    outputSelection: { '*': { '*': ['abi', 'evm.bytecode.object'] } },
  },
};
const output = JSON.parse(solc.compile(JSON.stringify(input)));
const errors = (output.errors ?? []).filter((e) => e.severity === 'error');
for (const e of output.errors ?? []) process.stderr.write(e.formattedMessage);
if (errors.length > 0) process.exit(1);

const contracts = {};
for (const file of Object.keys(output.contracts ?? {})) {
  for (const [name, c] of Object.entries(output.contracts[file])) {
    contracts[name] = { abi: c.abi, bytecode: `0x${c.evm.bytecode.object}` };
  }
}
const json = JSON.stringify({ solcVersion: solc.version(), contracts }, null, 2) + '\n';
if (out) {
  mkdirSync(dirname(resolve(out)), { recursive: true });
  writeFileSync(out, json);
} else {
  process.stdout.write(json);
}
