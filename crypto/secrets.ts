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
  const hash = await deviceSecretScrypt.run(() => scryptAsync(secret, salt, 32, SCRYPT))
  return `scrypt$${SCRYPT.N}$${SCRYPT.r}$${SCRYPT.p}$${salt.toString('base64url')}$${hash.toString('base64url')}`
}

/** A cap on concurrent scrypt work, with its own queue (first come, first served). */
export interface WorkLimiter {
  run<T> (work: () => Promise<T>): Promise<T>
  /** Running and queued now; `started`: how many ever began (tests read it to prove a refusal came before any hashing). */
  stats (): { running: number, waiting: number, started: number }
}

export function createWorkLimiter (maxConcurrent: number): WorkLimiter {
  let running = 0
  let started = 0
  const waiting: Array<() => void> = []
  return {
    async run (work) {
      if (running >= maxConcurrent) await new Promise<void>((resolve) => waiting.push(resolve))
      running++
      started++
      try {
        return await work()
      } finally {
        running--
        waiting.shift()?.()
      }
    },
    stats: () => ({ running, waiting: waiting.length, started })
  }
}

/*
 * scrypt runs on libuv's thread pool (4 threads by default), the same pool that serves file
 * writes and fsync. Device secrets and human passwords each get their own budget, so a login
 * flood (0.65 s a password) never queues a device's CONNECT: devices 2 at a time, passwords 1
 * (access/passwords.ts), which leaves a thread for the spool's and PGlite's durable writes.
 */
export const deviceSecretScrypt = createWorkLimiter(2)

export async function verifySecret (secret: string, stored: string): Promise<boolean> {
  const parts = stored.split('$')
  if (parts.length !== 6 || parts[0] !== 'scrypt') return false
  const [, n, r, p, salt, hash] = parts as [string, string, string, string, string, string]
  const expected = Buffer.from(hash, 'base64url')
  const actual = await deviceSecretScrypt.run(() => scryptAsync(secret, Buffer.from(salt, 'base64url'), expected.length, {
    N: Number(n), r: Number(r), p: Number(p), maxmem: SCRYPT.maxmem
  }))
  return timingSafeEqual(actual, expected)
}

/** For high-entropy tokens only: a fast digest is enough when guessing is hopeless. */
export function sha256 (value: string): Buffer {
  return createHash('sha256').update(value).digest()
}
