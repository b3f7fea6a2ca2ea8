#!/usr/bin/env node
// End-to-end proof that the mppx CLI (0.11.0) pays an `evm` charge with an EIP-3009
// `authorization` credential on a local chain, using tests/mppx/mppx.config.mjs.
//
//   node tests/mppx/e2e.mjs        (after `npm ci`; exits 0 when every step passed)
//
// It starts anvil, compiles and deploys contracts/TestStablecoin.sol, mints to a payer, and
// serves a tiny stand-in for Turnpike's `evm` rail: GET /paid answers 402 with an `evm` charge
// challenge; a credential is checked against the challenge and settled on chain with
// transferWithAuthorization from a relayer account, then answered 200 with a Payment-Receipt.
// Then it runs `mppx URL`, replays the credential, and runs `mppx validate`.
import { execFileSync, spawn } from 'node:child_process'
import { once } from 'node:events'
import { createServer } from 'node:http'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { readFileSync } from 'node:fs'
import {
  createPublicClient,
  createWalletClient,
  getAddress,
  http,
  keccak256,
  parseSignature,
  stringToHex,
} from 'viem'
import { privateKeyToAccount } from 'viem/accounts'
import { foundry } from 'viem/chains'

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..')
const NAME = 'Turnpike Test USD'
const VERSION = '1'
const REALM = 'standin.turnpike.test'
const AMOUNT = '1250000'
let failures = 0
function check(ok, what, detail = '') {
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${what}${detail ? `: ${detail}` : ''}`)
  if (!ok) failures++
}

// ---- anvil ----
const anvilBin = join(root, 'node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil')
const anvil = spawn(anvilBin, ['--host', '127.0.0.1', '--port', '0'], { stdio: ['ignore', 'pipe', 'inherit'] })
const keys = []
const rpcUrl = await new Promise((ok, fail) => {
  let buffer = ''
  anvil.stdout.on('data', (chunk) => {
    buffer += chunk
    for (const m of buffer.matchAll(/^\(\d+\) (0x[0-9a-f]{64})$/gm)) if (!keys.includes(m[1])) keys.push(m[1])
    const listening = /Listening on (\S+)/.exec(buffer)
    if (listening) ok(`http://${listening[1]}`)
  })
  anvil.on('exit', (code) => fail(new Error(`anvil exited ${code}`)))
})
process.on('exit', () => anvil.kill())
const [deployer, payer, payee, relayer] = keys.slice(0, 4).map((k) => privateKeyToAccount(k))
const transport = http(rpcUrl)
const pub = createPublicClient({ chain: foundry, transport })
const wallet = (account) => createWalletClient({ account, chain: foundry, transport })

// ---- the token ----
// The Rust test passes the artifact it cached (TURNPIKE_CONTRACT_ARTIFACT); else compile here.
const artifact = JSON.parse(
  process.env.TURNPIKE_CONTRACT_ARTIFACT
    ? readFileSync(process.env.TURNPIKE_CONTRACT_ARTIFACT, 'utf8')
    : execFileSync('node', [join(root, 'scripts/compile-contracts.mjs')], { encoding: 'utf8' }),
)
const { abi, bytecode } = artifact.contracts.TestStablecoin
const deployHash = await wallet(deployer).deployContract({ abi, bytecode, args: [NAME, VERSION] })
const token = (await pub.waitForTransactionReceipt({ hash: deployHash })).contractAddress
await pub.waitForTransactionReceipt({
  hash: await wallet(deployer).writeContract({ address: token, abi, functionName: 'mint', args: [payer.address, 5_000_000n] }),
})
const balance = (who) => pub.readContract({ address: token, abi, functionName: 'balanceOf', args: [who] })

// ---- the stand-in server ----
function jcs(value) {
  if (Array.isArray(value)) return `[${value.map(jcs).join(',')}]`
  if (value && typeof value === 'object')
    return `{${Object.keys(value).sort().map((k) => `${JSON.stringify(k)}:${jcs(value[k])}`).join(',')}}`
  return JSON.stringify(value)
}
const b64url = (text) => Buffer.from(text).toString('base64url')
const challenges = new Map()
const requests = []
function challenge() {
  const id = `ch_${Math.random().toString(36).slice(2)}`
  const request = {
    amount: AMOUNT,
    currency: token,
    methodDetails: { chainId: foundry.id, credentialTypes: ['authorization'], decimals: 6 },
    recipient: payee.address,
  }
  const expires = new Date(Date.now() + 5 * 60_000).toISOString()
  challenges.set(id, { request, expires, used: false })
  return `Payment id="${id}", realm="${REALM}", method="evm", intent="charge", request="${b64url(jcs(request))}", expires="${expires}"`
}
function problem(res, status, detail) {
  res.writeHead(status, { 'content-type': 'application/problem+json', 'www-authenticate': challenge() })
  res.end(JSON.stringify({ type: 'https://paymentauth.org/problems/verification-failed', title: 'Payment failed', status, detail }))
}
async function settle(credential) {
  const c = challenges.get(credential.challenge?.id)
  if (!c) throw new Error('unknown challenge')
  const p = credential.payload
  if (p.type !== 'authorization') throw new Error(`payload type ${p.type}`)
  if (getAddress(p.to) !== getAddress(c.request.recipient)) throw new Error('recipient mismatch')
  if (p.value !== c.request.amount) throw new Error('amount mismatch')
  if (p.nonce !== keccak256(stringToHex(`${credential.challenge.id}${REALM}`))) throw new Error('nonce is not the challenge hash')
  const { r, s, v, yParity } = parseSignature(p.signature)
  const hash = await wallet(relayer).writeContract({
    address: token,
    abi,
    functionName: 'transferWithAuthorization',
    args: [p.from, p.to, BigInt(p.value), BigInt(p.validAfter), BigInt(p.validBefore), p.nonce, Number(v ?? 27n + BigInt(yParity)), r, s],
  })
  const receipt = await pub.waitForTransactionReceipt({ hash })
  if (receipt.status !== 'success') throw new Error('reverted')
  c.used = true
  return hash
}
const server = createServer(async (req, res) => {
  requests.push({ method: req.method, url: req.url, authorization: req.headers.authorization, acceptPayment: req.headers['accept-payment'] })
  if (req.url === '/openapi.json') {
    res.writeHead(200, { 'content-type': 'application/json' })
    return res.end(JSON.stringify({
      openapi: '3.1.0',
      info: { title: 'stand-in', version: '0' },
      paths: { '/paid': { get: { 'x-payment-info': { amount: AMOUNT, currency: token, method: 'evm', intent: 'charge' }, responses: { 200: { description: 'ok' }, 402: { description: 'Payment Required' } } } } },
    }))
  }
  if (req.url === '/llms.txt') {
    res.writeHead(200, { 'content-type': 'text/plain' })
    return res.end('A stand-in for Turnpike: GET /paid costs 1.25 TUSD (evm).\n')
  }
  if (req.url !== '/paid') {
    res.writeHead(404)
    return res.end()
  }
  const auth = req.headers.authorization
  if (!auth?.startsWith('Payment ')) {
    res.writeHead(402, { 'www-authenticate': challenge(), 'cache-control': 'no-store', 'content-type': 'application/problem+json' })
    return res.end(JSON.stringify({ type: 'https://paymentauth.org/problems/payment-required', title: 'Payment Required', status: 402 }))
  }
  let credential
  try {
    credential = JSON.parse(Buffer.from(auth.slice(8), 'base64url').toString())
  } catch {
    return problem(res, 402, 'malformed credential')
  }
  try {
    const hash = await settle(credential)
    const receipt = { method: 'evm', challengeId: credential.challenge.id, reference: hash, status: 'success', timestamp: new Date().toISOString(), chainId: foundry.id }
    res.writeHead(200, { 'content-type': 'application/json', 'payment-receipt': b64url(jcs(receipt)) })
    res.end(JSON.stringify({ paid: true, reference: hash }))
  } catch (e) {
    problem(res, 402, e.shortMessage ?? e.message)
  }
})
server.listen(0, '127.0.0.1')
await once(server, 'listening')
const base = `http://127.0.0.1:${server.address().port}`

// ---- mppx ----
const mppx = join(root, 'node_modules/.bin/mppx')
const env = {
  ...process.env,
  MPPX_CONFIG: join(root, 'tests/mppx/mppx.config.mjs'),
  MPPX_EVM_PRIVATE_KEY: keys[1],
  MPPX_EVM_TOKEN: token,
  MPPX_EVM_CHAIN_ID: String(foundry.id),
  NO_UPDATE_NOTIFIER: '1',
}
function run(args) {
  const started = Date.now()
  return new Promise((ok) => {
    const child = spawn(mppx, args, { env, cwd: '/', stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d) => (stdout += d))
    child.stderr.on('data', (d) => (stderr += d))
    child.on('exit', (code) => {
      console.log(`(mppx ${args.join(' ')}: ${((Date.now() - started) / 1000).toFixed(1)} s)`)
      ok({ code, stdout, stderr })
    })
  })
}

const before = { payer: await balance(payer.address), payee: await balance(payee.address) }
const paid = await run([`${base}/paid`, '-i', '-v'])
console.log(`--- mppx ${base}/paid -i -v (exit ${paid.code}) ---\nstdout:\n${paid.stdout}stderr:\n${paid.stderr}---`)
check(paid.code === 0, 'mppx exits 0 after paying', `exit ${paid.code}`)
check(/"paid":true/.test(paid.stdout), 'the paid response body is on stdout')
check((await balance(payee.address)) - before.payee === BigInt(AMOUNT), 'the payee received the amount on chain')
check(before.payer - (await balance(payer.address)) === BigInt(AMOUNT), 'the payer paid the amount')
const paidRequest = requests.find((r) => r.authorization)
check(!!paidRequest, 'mppx sent an Authorization: Payment credential')
const credential = JSON.parse(Buffer.from(paidRequest.authorization.slice(8), 'base64url').toString())
console.log('credential:', JSON.stringify(credential, null, 2))
console.log('accept-payment sent by mppx:', requests[0].acceptPayment)
check(credential.source === `did:pkh:eip155:${foundry.id}:${payer.address}`, 'source is did:pkh of the payer')
check(credential.payload.validAfter === '0', 'validAfter is "0"')
check(
  credential.payload.validBefore === String(Math.floor(new Date(credential.challenge.expires).getTime() / 1000)),
  'validBefore is the challenge expires',
)

// Replaying the same credential: the token refuses the used nonce.
const replay = await fetch(`${base}/paid`, { headers: { authorization: paidRequest.authorization } })
check(replay.status === 402, 'a replayed credential is refused', `${replay.status} ${await replay.text()}`)

// A payer without funds: mppx reports the rejection.
const broke = await run([`${base}/paid`])
check(broke.code === 0, 'control: a second payment from the same payer succeeds', `exit ${broke.code} ${broke.stderr}`)
env.MPPX_EVM_PRIVATE_KEY = keys[5]
const rejected = await run([`${base}/paid`])
console.log(`--- unfunded payer (exit ${rejected.code}) ---\nstdout:\n${rejected.stdout}stderr:\n${rejected.stderr}---`)
check(rejected.code === 75, 'an unfunded payer: mppx exits 75 (PAYMENT_REJECTED)', `exit ${rejected.code}`)
env.MPPX_EVM_PRIVATE_KEY = keys[1]

// Wrong token in the config: mppx refuses before signing.
env.MPPX_EVM_TOKEN = payee.address
const wrongToken = await run([`${base}/paid`])
console.log(`--- wrong token allowlist (exit ${wrongToken.code}) ---\nstdout:\n${wrongToken.stdout}stderr:\n${wrongToken.stderr}---`)
check(wrongToken.code !== 0, 'a challenge for a token outside the allowlist is not paid', `exit ${wrongToken.code}`)
env.MPPX_EVM_TOKEN = token

// mppx validate: discovery, challenge checks, error handling, and a real payment (--yes).
const validate = await run(['validate', base, '--yes'])
console.log(`--- mppx validate ${base} --yes (exit ${validate.code}) ---\n${validate.stdout}${validate.stderr}---`)
check(validate.code === 0, 'mppx validate passes', `exit ${validate.code}`)
check(/Payment: successful/.test(validate.stdout), 'mppx validate paid the endpoint')
const validateJson = await run(['validate', base, '--yes', '--output-json'])
check(validateJson.code === 0, 'mppx validate --output-json passes', `exit ${validateJson.code}`)

server.close()
console.log(failures === 0 ? 'all steps passed' : `${failures} step(s) failed`)
process.exit(failures === 0 ? 0 : 1)
