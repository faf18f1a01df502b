import { randomBytes, scrypt, timingSafeEqual } from 'node:crypto'
import { promisify } from 'node:util'
import { createWorkLimiter } from '../crypto/secrets.ts'

const scryptAsync = promisify(scrypt) as (password: string, salt: Buffer, keylen: number, options: { N: number, r: number, p: number, maxmem: number }) => Promise<Buffer>

/**
 * Human passwords get OWASP's scrypt minimum (Password Storage Cheat Sheet: N=2^17, r=8,
 * p=1; 128 MiB and about 0.65 s a hash on our 2-core machines), unlike device secrets (crypto/secrets.ts), which are
 * random and need no slow KDF. The cost lives in each hash string, so tests may use a
 * cheaper one and verification works for any mix.
 */
export const PASSWORD_SCRYPT = { N: 2 ** 17, r: 8, p: 1 } as const
// scrypt needs 128·N·r bytes; the default maxmem (32 MiB) refuses OWASP's parameters.
const MAX_MEMORY = 256 * 1024 * 1024

/**
 * Password hashing's own budget, one at a time (128 MiB and ~0.65 s each): logins queue here,
 * never in front of device secrets (crypto/secrets.ts). The API refuses a login flood before it
 * reaches this queue (access/login-budget.ts).
 */
export const passwordScrypt = createWorkLimiter(1)

export type ScryptCost = { N: number, r: number, p: number }

export const MIN_PASSWORD_LENGTH = 12
export const MAX_PASSWORD_LENGTH = 256

/**
 * Why a password is too weak, or null when it is strong enough: at least 12 characters
 * (NIST SP 800-63B §5.1.1.2 asks for 8 minimum; PHI warrants more) and not all of one
 * character class (all digits, all lower-case …), which dictionary attacks try first.
 */
export function passwordWeakness (password: string): string | null {
  if ([...password].length < MIN_PASSWORD_LENGTH) return `must be at least ${MIN_PASSWORD_LENGTH} characters`
  if (password.length > MAX_PASSWORD_LENGTH) return `must be at most ${MAX_PASSWORD_LENGTH} characters`
  const classes = [/[a-z]/, /[A-Z]/, /[0-9]/, /[^a-zA-Z0-9]/].filter((c) => c.test(password)).length
  if (classes < 2) return 'must mix at least two of: lower-case, upper-case, digits, other characters'
  if (new Set(password).size < 4) return 'must not repeat the same few characters'
  return null
}

/** `scrypt$N$r$p$salt$hash`, base64url fields (the format of crypto/secrets.ts). */
export async function hashPassword (password: string, cost: ScryptCost = PASSWORD_SCRYPT): Promise<string> {
  const salt = randomBytes(16)
  const hash = await passwordScrypt.run(() => scryptAsync(password.normalize('NFKC'), salt, 32, { ...cost, maxmem: MAX_MEMORY }))
  return `scrypt$${cost.N}$${cost.r}$${cost.p}$${salt.toString('base64url')}$${hash.toString('base64url')}`
}

export async function verifyPassword (password: string, stored: string): Promise<boolean> {
  const parts = stored.split('$')
  if (parts.length !== 6 || parts[0] !== 'scrypt') return false
  const [, n, r, p, salt, hash] = parts as [string, string, string, string, string, string]
  const expected = Buffer.from(hash, 'base64url')
  const actual = await passwordScrypt.run(() => scryptAsync(password.normalize('NFKC'), Buffer.from(salt, 'base64url'), expected.length, {
    N: Number(n), r: Number(r), p: Number(p), maxmem: MAX_MEMORY
  }))
  return timingSafeEqual(actual, expected)
}
