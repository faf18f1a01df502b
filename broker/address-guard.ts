import net from 'node:net'

export interface AddressGuardLimits {
  /** New connections per minute from one address; 0: no limit. */
  connectsPerMinute: number
  /** Refused credentials within `failureWindowMs` that lock the address out; 0: never. */
  failuresBeforeLockout: number
  failureWindowMs: number
  lockoutMs: number
}

/** What admitting a connection decided; `refused_first` is the first refusal of a run (log it loudly). */
export type Admission = 'admitted' | 'refused' | 'refused_first'

export interface AddressGuard {
  /** Takes one connection from the address's allowance. */
  admitConnection (address: string): Admission
  /** Whether the address is locked out after repeated refused credentials. */
  lockedOut (address: string): boolean
  /** Counts refused credentials; true when this one starts a lockout. */
  recordAuthFailure (address: string): boolean
  close (): void
}

// One entry per address in each map; past this the oldest entries go first, so an attacker
// spraying addresses costs bounded memory (at worst it frees an earlier address early).
const MAX_TRACKED_ADDRESSES = 65_536
const PRUNE_EVERY_MS = 60_000

interface Allowance { tokens: number, updatedAt: number, refusing: boolean }
interface Failures { count: number, windowStart: number, lockedUntil: number }

/**
 * The key limits are kept under: the IPv4 address (also when it arrives IPv4-mapped, `::ffff:a.b.c.d`),
 * or the /64 prefix of an IPv6 address, since one IPv6 host usually controls a whole /64.
 */
export function addressKey (address: string | undefined): string {
  if (address === undefined || address === '') return 'unknown'
  const bare = address.split('%')[0]!
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(bare)
  if (mapped !== null) return mapped[1]!
  if (!net.isIPv6(bare)) return bare
  const [head, tail] = bare.split('::') as [string, string | undefined]
  const split = (part: string | undefined): string[] => part === undefined || part === ''
    ? []
    // An embedded IPv4 tail (RFC 4291 §2.2, form 3) fills two groups.
    : part.split(':').flatMap((g) => g.includes('.') ? ['0', '0'] : [g])
  const headGroups = split(head)
  const tailGroups = split(tail)
  const groups = tail === undefined
    ? headGroups
    : [...headGroups, ...Array<string>(8 - headGroups.length - tailGroups.length).fill('0'), ...tailGroups]
  return groups.slice(0, 4).map((g) => parseInt(g, 16).toString(16)).join(':') + '::/64'
}

/**
 * Per-address connection rate (a token bucket refilled continuously, so a burst of up to a
 * minute's allowance is fine) and lockout after repeated refused credentials. Addresses behind
 * one NAT share both: size the limits for the largest site gateway.
 */
export function createAddressGuard (limits: AddressGuardLimits, now: () => number = Date.now): AddressGuard {
  const allowances = new Map<string, Allowance>()
  const failures = new Map<string, Failures>()
  const refillPerMs = limits.connectsPerMinute / 60_000

  function remember<V> (map: Map<string, V>, key: string, value: V): V {
    if (map.size >= MAX_TRACKED_ADDRESSES) map.delete(map.keys().next().value!)
    map.set(key, value)
    return value
  }

  const prune = setInterval(() => {
    const t = now()
    for (const [key, a] of allowances) {
      if (a.tokens + (t - a.updatedAt) * refillPerMs >= limits.connectsPerMinute) allowances.delete(key)
    }
    for (const [key, f] of failures) {
      if (f.lockedUntil <= t && t - f.windowStart > limits.failureWindowMs) failures.delete(key)
    }
  }, PRUNE_EVERY_MS)
  prune.unref()

  return {
    admitConnection (address) {
      if (limits.connectsPerMinute === 0) return 'admitted'
      const key = addressKey(address)
      const t = now()
      const a = allowances.get(key) ?? remember(allowances, key, { tokens: limits.connectsPerMinute, updatedAt: t, refusing: false })
      a.tokens = Math.min(limits.connectsPerMinute, a.tokens + (t - a.updatedAt) * refillPerMs)
      a.updatedAt = t
      if (a.tokens >= 1) {
        a.tokens -= 1
        a.refusing = false
        return 'admitted'
      }
      if (a.refusing) return 'refused'
      a.refusing = true
      return 'refused_first'
    },

    lockedOut (address) {
      const f = failures.get(addressKey(address))
      return f !== undefined && f.lockedUntil > now()
    },

    recordAuthFailure (address) {
      if (limits.failuresBeforeLockout === 0) return false
      const key = addressKey(address)
      const t = now()
      const f = failures.get(key) ?? remember(failures, key, { count: 0, windowStart: t, lockedUntil: 0 })
      if (t - f.windowStart > limits.failureWindowMs) {
        f.count = 0
        f.windowStart = t
      }
      f.count++
      if (f.count < limits.failuresBeforeLockout) return false
      // The count starts again after the lockout: attempts refused while locked out are not
      // counted, so a misconfigured device behind a shared address cannot extend it forever.
      f.count = 0
      f.windowStart = t + limits.lockoutMs
      f.lockedUntil = t + limits.lockoutMs
      return true
    },

    close () {
      clearInterval(prune)
      allowances.clear()
      failures.clear()
    }
  }
}
