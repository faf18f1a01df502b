import { randomUUID } from 'node:crypto'
import type pg from 'pg'
import { PASSWORD_SCRYPT, verifyPassword, type ScryptCost } from './passwords.ts'
import { newSecret, sha256 } from '../crypto/secrets.ts'
import { inTransaction as runInTransaction } from '../store/database.ts'
import { defaults } from '../config/schema/defaults.ts'

export interface SessionSettings {
  /** Lifetime of an access token. */
  accessTokenTtlSeconds: number
  /** A session unused this long is over (its access and refresh tokens stop working). */
  sessionIdleSeconds: number
  /** A session ends this long after login whatever its use: refresh cannot extend it further. */
  sessionMaxSeconds: number
  /** Consecutive failed logins that lock an account … */
  loginMaxFailures: number
  /** … for this long. */
  loginLockoutSeconds: number
}

/** The VIGIL_ACCESS_TOKEN_TTL_SECONDS … VIGIL_LOGIN_LOCKOUT_SECONDS defaults (config/schema/defaults.ts says why). */
export const sessionDefaults: Readonly<SessionSettings> = {
  accessTokenTtlSeconds: defaults.VIGIL_ACCESS_TOKEN_TTL_SECONDS,
  sessionIdleSeconds: defaults.VIGIL_SESSION_IDLE_SECONDS,
  sessionMaxSeconds: defaults.VIGIL_SESSION_MAX_SECONDS,
  loginMaxFailures: defaults.VIGIL_LOGIN_MAX_FAILURES,
  loginLockoutSeconds: defaults.VIGIL_LOGIN_LOCKOUT_SECONDS
}

export interface IssuedTokens {
  accessToken: string
  refreshToken: string
  /** Seconds until the access token expires. */
  expiresIn: number
  sessionId: string
  userId: string
}

export interface RoleGrant { id: string, category: string, permissions: string[] }

export interface SessionPrincipal { sessionId: string, userId: string, roles: RoleGrant[] }

export type LoginOutcome = { ok: true, tokens: IssuedTokens } | { ok: false, reason: 'unknown' | 'inactive' | 'locked' | 'wrong-password' | 'just-locked' }

// A real hash of a random password: an unknown email costs the same scrypt as a known one,
// so response time does not tell whether an account exists.
/** A hash at `cost` that no password matches: an unknown or locked account costs what a known one does. */
function dummyHash (cost: ScryptCost): string {
  return `scrypt$${cost.N}$${cost.r}$${cost.p}$AAAAAAAAAAAAAAAAAAAAAA$aPoTmj5gxuoCDXtYGvXl_6Cf2SwNHBCmElfAwNoyztA`
}

const ACCESS_PREFIX = 'vga'
const REFRESH_PREFIX = 'vgr'

/** Whether a bearer secret is a session access token (the rest are API tokens). */
export function isAccessToken (bearer: string): boolean {
  return bearer.startsWith(`${ACCESS_PREFIX}_`)
}

/**
 * Logins, rotating refresh tokens, idle and absolute expiry, logout. Tokens are opaque 256-bit
 * secrets stored as SHA-256 (like API tokens): revocation is a row update, checked on every
 * request, which a signed token could not offer. `now` is the clock (tests move it).
 */
export function createSessionStore (pool: pg.Pool, settings: SessionSettings, now: () => Date = () => new Date(), passwordCost: ScryptCost = PASSWORD_SCRYPT) {
  const DUMMY_HASH = dummyHash(passwordCost)
  const inTransaction = async <T>(work: (client: pg.PoolClient) => Promise<T>): Promise<T> => await runInTransaction(pool, work)

  async function issue (client: pg.PoolClient, sessionId: string, userId: string, at: Date): Promise<IssuedTokens> {
    const accessToken = newSecret(ACCESS_PREFIX)
    const refreshToken = newSecret(REFRESH_PREFIX)
    const accessExpires = new Date(at.getTime() + settings.accessTokenTtlSeconds * 1000)
    await client.query(
      `INSERT INTO session_tokens (token_hash, session_id, kind, expires_at)
       VALUES ($1, $3, 'access', $4), ($2, $3, 'refresh', (SELECT expires_at FROM sessions WHERE id = $3))`,
      [sha256(accessToken), sha256(refreshToken), sessionId, accessExpires])
    return { accessToken, refreshToken, expiresIn: settings.accessTokenTtlSeconds, sessionId, userId }
  }

  async function revoke (q: pg.Pool | pg.PoolClient, sessionId: string, reason: string): Promise<boolean> {
    const { rowCount } = await q.query(
      'UPDATE sessions SET revoked_at = $2, revoked_reason = $3 WHERE id = $1 AND revoked_at IS NULL', [sessionId, now(), reason])
    return (rowCount ?? 0) > 0
  }

  return {
    /**
     * Checks email + password; counts failures and locks the account after
     * loginMaxFailures in a row. A locked account refuses even the right password.
     */
    async login (email: string, password: string): Promise<LoginOutcome> {
      const at = now()
      const { rows } = await pool.query(
        'SELECT id, password_hash, active, locked_until FROM users WHERE lower(email) = lower($1) AND password_hash IS NOT NULL', [email])
      const user = rows[0]
      if (user === undefined) {
        await verifyPassword(password, DUMMY_HASH)
        return { ok: false, reason: 'unknown' }
      }
      if (user.locked_until !== null && (user.locked_until as Date).getTime() > at.getTime()) {
        await verifyPassword(password, DUMMY_HASH)
        return { ok: false, reason: 'locked' }
      }
      const matches = await verifyPassword(password, user.password_hash as string)
      if (!matches) {
        // One statement: concurrent failures all count, and the one that reaches the limit locks.
        const { rows: counted } = await pool.query(
          `UPDATE users SET
             failed_login_count = CASE WHEN failed_login_count + 1 >= $2 THEN 0 ELSE failed_login_count + 1 END,
             locked_until = CASE WHEN failed_login_count + 1 >= $2 THEN $3::timestamptz ELSE locked_until END
           WHERE id = $1 RETURNING locked_until`,
          [user.id, settings.loginMaxFailures, new Date(at.getTime() + settings.loginLockoutSeconds * 1000)])
        const lockedNow = counted[0]?.locked_until !== null && (counted[0]?.locked_until as Date).getTime() > at.getTime()
        return { ok: false, reason: lockedNow ? 'just-locked' : 'wrong-password' }
      }
      if (user.active !== true) return { ok: false, reason: 'inactive' }
      const tokens = await inTransaction(async (client) => {
        await client.query('UPDATE users SET failed_login_count = 0, locked_until = NULL WHERE id = $1', [user.id])
        const sessionId = randomUUID()
        await client.query('INSERT INTO sessions (id, user_id, created_at, last_used_at, expires_at) VALUES ($1, $2, $3, $3, $4)',
          [sessionId, user.id, at, new Date(at.getTime() + settings.sessionMaxSeconds * 1000)])
        return await issue(client, sessionId, user.id as string, at)
      })
      return { ok: true, tokens }
    },

    /**
     * A new access + refresh token pair for a refresh token, which is used up. Presenting a
     * used one again means it was copied: the whole session is revoked (OAuth 2.0 Security
     * BCP, RFC 9700 §4.14.2, refresh token rotation with reuse detection).
     */
    async refresh (refreshToken: string): Promise<IssuedTokens | null> {
      const at = now()
      return await inTransaction(async (client) => {
        const { rows } = await client.query(
          `SELECT t.session_id, t.replaced_at, s.user_id, s.revoked_at, s.last_used_at, s.expires_at, u.active
             FROM session_tokens t JOIN sessions s ON s.id = t.session_id JOIN users u ON u.id = s.user_id
            WHERE t.token_hash = $1 AND t.kind = 'refresh' FOR UPDATE OF t, s`, [sha256(refreshToken)])
        const row = rows[0]
        if (row === undefined || row.revoked_at !== null) return null
        if (row.replaced_at !== null) {
          await revoke(client, row.session_id as string, 'refresh token reuse')
          return null
        }
        if (!sessionAlive(row, at) || row.active !== true) return null
        await client.query('UPDATE session_tokens SET replaced_at = $2 WHERE token_hash = $1', [sha256(refreshToken), at])
        // Access tokens issued before this refresh stop working: one live pair per session.
        await client.query("UPDATE session_tokens SET expires_at = least(expires_at, $2) WHERE session_id = $1 AND kind = 'access'",
          [row.session_id, at])
        await client.query('UPDATE sessions SET last_used_at = $2 WHERE id = $1', [row.session_id, at])
        return await issue(client, row.session_id as string, row.user_id as string, at)
      })
    },

    /** Ends the session an access or refresh token belongs to. False when it was not live. */
    async logout (token: string): Promise<boolean> {
      const { rows } = await pool.query('SELECT session_id FROM session_tokens WHERE token_hash = $1', [sha256(token)])
      if (rows[0] === undefined) return false
      return await revoke(pool, rows[0].session_id as string, 'logout')
    },

    /** The user and roles behind a live access token, or null. Each use counts as activity. */
    async authenticate (accessToken: string): Promise<SessionPrincipal | null> {
      const at = now()
      const { rows } = await pool.query(
        `SELECT s.id AS session_id, s.user_id, s.last_used_at, s.expires_at,
                coalesce((SELECT json_agg(json_build_object('id', d.id, 'category', d.category, 'permissions', d.permissions))
                            FROM roles r JOIN role_definitions d ON d.id = r.role_id WHERE r.user_id = s.user_id), '[]') AS roles
           FROM session_tokens t JOIN sessions s ON s.id = t.session_id JOIN users u ON u.id = s.user_id
          WHERE t.token_hash = $1 AND t.kind = 'access' AND t.expires_at > $2 AND s.revoked_at IS NULL AND u.active`,
        [sha256(accessToken), at])
      const row = rows[0]
      if (row === undefined || !sessionAlive(row, at)) return null
      // Second resolution is plenty for a 30-minute idle window; most requests skip the write.
      if (at.getTime() - (row.last_used_at as Date).getTime() >= 1000) {
        await pool.query('UPDATE sessions SET last_used_at = greatest(last_used_at, $2) WHERE id = $1', [row.session_id, at])
      }
      const roles = (typeof row.roles === 'string' ? JSON.parse(row.roles) : row.roles) as RoleGrant[]
      return { sessionId: row.session_id, userId: row.user_id, roles }
    },

    async revokeUserSessions (userId: string, reason: string): Promise<number> {
      const { rowCount } = await pool.query(
        'UPDATE sessions SET revoked_at = $2, revoked_reason = $3 WHERE user_id = $1 AND revoked_at IS NULL', [userId, now(), reason])
      return rowCount ?? 0
    }
  }

  function sessionAlive (row: { last_used_at: unknown, expires_at: unknown }, at: Date): boolean {
    return (row.last_used_at as Date).getTime() + settings.sessionIdleSeconds * 1000 > at.getTime() &&
      (row.expires_at as Date).getTime() > at.getTime()
  }
}

export type SessionStore = ReturnType<typeof createSessionStore>
