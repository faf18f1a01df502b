import { createHash, randomBytes, scrypt, timingSafeEqual } from 'node:crypto'
import { promisify } from 'node:util'

const scryptAsync = promisify(scrypt) as (password: string, salt: Buffer, keylen: number, options: { N: number, r: number, p: number, maxmem: number }) => Promise<Buffer>

/*
 * Device secrets are 256 random bits, not human passwords: a slow KDF buys nothing against
 * guessing them (2^256 tries at any speed), it only makes a reconnect storm of thousands of
 * devices cost minutes of CPU. scrypt is kept (a salted, memory-hard hash, so a stolen table
 * is still no better than the secrets themselves), at N=2^10 (≈4 ms here). Human passwords
 * need OWASP's minimum (N=2^17, r=8, p=1); the parameters live in each hash
 * string, so verification works for any mix.
 */
const SCRYPT = { N: 1024, r: 8, p: 1, maxmem: 64 * 1024 * 1024 } as const

/** A 256-bit random secret with a readable prefix (`vgl_…`, `vgt_…`) so leaked ones are greppable. */
export function newSecret (prefix: string): string {
  return `${prefix}_${randomBytes(32).toString('base64url')}`
}

/** `scrypt$N$r$p$salt$hash`, base64url fields. */
export async function hashSecret (secret: string): Promise<string> {
  const salt = randomBytes(16)
  const hash = await limitedScrypt(() => scryptAsync(secret, salt, 32, SCRYPT))
  return `scrypt$${SCRYPT.N}$${SCRYPT.r}$${SCRYPT.p}$${salt.toString('base64url')}$${hash.toString('base64url')}`
}

/*
 * scrypt runs on libuv's thread pool (4 threads by default), the same pool that serves file
 * writes and fsync. A reconnect storm of devices would queue the spool's fsyncs behind seconds
 * of scrypt; capping scrypt at 2 at a time keeps half the pool for durable writes.
 */
const maxConcurrentScrypt = 2
let runningScrypt = 0
const waitingScrypt: Array<() => void> = []

export async function limitedScrypt<T> (work: () => Promise<T>): Promise<T> {
  if (runningScrypt >= maxConcurrentScrypt) await new Promise<void>((resolve) => waitingScrypt.push(resolve))
  runningScrypt++
  try {
    return await work()
  } finally {
    runningScrypt--
    waitingScrypt.shift()?.()
  }
}

export async function verifySecret (secret: string, stored: string): Promise<boolean> {
  const parts = stored.split('$')
  if (parts.length !== 6 || parts[0] !== 'scrypt') return false
  const [, n, r, p, salt, hash] = parts as [string, string, string, string, string, string]
  const expected = Buffer.from(hash, 'base64url')
  const actual = await limitedScrypt(() => scryptAsync(secret, Buffer.from(salt, 'base64url'), expected.length, {
    N: Number(n), r: Number(r), p: Number(p), maxmem: SCRYPT.maxmem
  }))
  return timingSafeEqual(actual, expected)
}

/** For high-entropy tokens only: a fast digest is enough when guessing is hopeless. */
export function sha256 (value: string): Buffer {
  return createHash('sha256').update(value).digest()
}
