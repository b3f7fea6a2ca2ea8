// mppx CLI configuration for paying an `evm` charge with an EIP-3009 `authorization` credential on
// a local chain (anvil) with the test stablecoin (contracts/TestStablecoin.sol).
//
// The CLI does NOT look for this file in the working directory: pass `--config PATH` (`-c`) or set
// `MPPX_CONFIG=PATH`. Everything chain-specific comes from the environment:
//
//   MPPX_EVM_PRIVATE_KEY  payer's private key (0x…; an anvil dev key). Falls back to MPPX_PRIVATE_KEY.
//   MPPX_EVM_CHAIN_ID     chain id the challenge must name (default 31337)
//   MPPX_EVM_TOKEN        token address the challenge's `currency` must be (required)
//   MPPX_EVM_TOKEN_NAME   the token's EIP-712 domain name (default "Turnpike Test USD")
//   MPPX_EVM_TOKEN_VERSION  the token's EIP-712 domain version (default "1")
//   MPPX_EVM_MAX_AMOUNT   optional cap in base units (maxAtomicAmount)
//
//   MPPX_CONFIG=tests/mppx/mppx.config.mjs MPPX_EVM_PRIVATE_KEY=0x… MPPX_EVM_TOKEN=0x… \
//     node_modules/.bin/mppx http://127.0.0.1:PORT/paid
//
// See tests/mppx/README.md for what the CLI then does and how it reports.
// Not `import { defineConfig } from 'mppx/cli'`: in mppx 0.11.0 that entry point re-exports
// cli/account.js, which imports `incur`, a package mppx bundles into its CLI but does not depend
// on, so the import fails ("Cannot find package 'incur'"). defineConfig is the identity function.
import { evm } from 'mppx/client'
import { privateKeyToAccount } from 'viem/accounts'

function env(name, fallback) {
  const value = process.env[name]?.trim()
  if (value) return value
  if (fallback !== undefined) return fallback
  throw new Error(`tests/mppx/mppx.config.mjs: set ${name}`)
}

const key = process.env.MPPX_EVM_PRIVATE_KEY?.trim() || env('MPPX_PRIVATE_KEY')
const chainId = Number(env('MPPX_EVM_CHAIN_ID', '31337'))
const token = env('MPPX_EVM_TOKEN')
const maxAtomicAmount = process.env.MPPX_EVM_MAX_AMOUNT?.trim() || undefined

export default {
  methods: [
    evm.charge({
      account: privateKeyToAccount(key),
      // EIP-712 domain of the token: {name, version, chainId (from the challenge),
      // verifyingContract (the challenge's currency)}.
      authorization: {
        name: env('MPPX_EVM_TOKEN_NAME', 'Turnpike Test USD'),
        version: env('MPPX_EVM_TOKEN_VERSION', '1'),
      },
      // Allowlists: refuse challenges for another chain or token (a raw-address currency
      // allowlist requires `networks`).
      networks: [chainId],
      currencies: [token],
      ...(maxAtomicAmount ? { maxAtomicAmount } : {}),
    }),
  ],
}
