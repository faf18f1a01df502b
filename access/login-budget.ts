import { isIPv6 } from 'node:net'

const WINDOW_MS = 60_000

export interface LoginBudgetLimits {
  perAddressPerMinute: number
  perAccountPerMinute: number
}

/** Null when the attempt may go on to the password check; otherwise seconds until it may be tried again. */
export type LoginAdmission = { admitted: true } | { admitted: false, retryAfterSeconds: number, budget: 'address' | 'account' }

/**
 * Login attempts counted per address and per account in fixed one-minute windows, taken
 * before the password is hashed, so a flood costs a map lookup, not 0.65 s of scrypt. An
 * attempt refused by its address budget is not charged to the account (a flood from one address
 * does not also lock its victims out of their budget). In memory: per process.
 */
export function createLoginBudget (limits: LoginBudgetLimits, now: () => number = Date.now) {
  const windows = new Map<string, { count: number, resetAt: number }>()

  function take (key: string, max: number, at: number): number | null {
    let w = windows.get(key)
    if (w === undefined || w.resetAt <= at) {
      if (windows.size >= 100_000) sweep(at)
      w = { count: 0, resetAt: at + WINDOW_MS }
      windows.set(key, w)
    }
    if (w.count >= max) return Math.max(1, Math.ceil((w.resetAt - at) / 1000))
    w.count++
    return null
  }

  function sweep (at: number): void {
    for (const [key, w] of windows) if (w.resetAt <= at) windows.delete(key)
  }

  return {
    admit (address: string, email: string): LoginAdmission {
      const at = now()
      const byAddress = take(`address ${addressKey(address)}`, limits.perAddressPerMinute, at)
      if (byAddress !== null) return { admitted: false, retryAfterSeconds: byAddress, budget: 'address' }
      // The store matches emails case-insensitively (lower(email)): so does the budget.
      const byAccount = take(`account ${email.normalize('NFKC').toLowerCase()}`, limits.perAccountPerMinute, at)
      if (byAccount !== null) return { admitted: false, retryAfterSeconds: byAccount, budget: 'account' }
      return { admitted: true }
    }
  }
}

export type LoginBudget = ReturnType<typeof createLoginBudget>

/** IPv4 as is (also when IPv4-mapped); IPv6 by its /64, one subscriber's allocation. */
function addressKey (address: string): string {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address)
  if (mapped !== null) return mapped[1]!
  if (!isIPv6(address)) return address
  const [head = '', tail] = address.split('::')
  const left = head === '' ? [] : head.split(':')
  const right = tail === undefined || tail === '' ? [] : tail.split(':')
  const groups = [...left, ...Array<string>(Math.max(0, 8 - left.length - right.length)).fill('0'), ...right]
  return groups.slice(0, 4).map((g) => g.toLowerCase().replace(/^0+(?=.)/, '')).join(':') + '::/64'
}
