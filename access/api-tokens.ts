import { randomUUID } from 'node:crypto'
import type pg from 'pg'
import { newSecret, sha256 } from '../crypto/secrets.ts'

/** A role definition id (role_definitions.id): 'admin', 'developer', 'device-integrator' or a custom role's id. */
export type TokenRole = string

export interface TokenPrincipal {
  tokenId: string
  name: string
  role: TokenRole
  /** Who created it: a user id, `token:<id>`, or null (VIGIL_ADMIN_TOKEN, tokens older than migration 003). */
  createdBy: string | null
  /**
   * Its role's category and permissions as they stand, read with the token by `authenticate`
   * (one round trip for both); null when no such role exists. Absent where not read.
   */
  roleGrant?: { category: string, permissions: string[] } | null
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i

export function createApiTokenStore (pool: pg.Pool) {
  return {
    /** Creates a token; returns the secret, which is never stored or shown again. */
    async create (name: string, role: TokenRole, createdBy: string | null = null): Promise<{ id: string, token: string }> {
      const token = newSecret('vgt')
      const id = randomUUID()
      await pool.query('INSERT INTO api_tokens (id, name, role, token_hash, created_by) VALUES ($1, $2, $3, $4, $5)',
        [id, name, role, sha256(token), createdBy])
      return { id, token }
    },

    /** Revokes a token; false when there is no live token with this id. */
    async revoke (id: string): Promise<boolean> {
      const { rowCount } = await pool.query('UPDATE api_tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL', [id])
      return (rowCount ?? 0) > 0
    },

    /** Names of these tokens, revoked ones included (the audit trail names them). */
    async namesOf (ids: readonly string[]): Promise<Map<string, string>> {
      if (ids.length === 0) return new Map()
      const { rows } = await pool.query('SELECT id, name FROM api_tokens WHERE id::text = ANY($1::text[])', [ids])
      return new Map(rows.map((r) => [String(r.id), r.name as string]))
    },

    async list (): Promise<Array<{ id: string, name: string, role: string, createdBy: string | null, createdAt: string, lastUsedAt: string | null }>> {
      const { rows } = await pool.query(
        'SELECT id, name, role, created_by, created_at, last_used_at FROM api_tokens WHERE revoked_at IS NULL ORDER BY created_at, id')
      return rows.map((r) => ({
        id: r.id, name: r.name, role: r.role, createdBy: r.created_by,
        createdAt: (r.created_at as Date).toISOString(), lastUsedAt: r.last_used_at === null ? null : (r.last_used_at as Date).toISOString()
      }))
    },

    /**
     * The operator's bootstrap token (VIGIL_ADMIN_TOKEN): created at the first start that sets
     * it; when the variable changes, the previous bootstrap token is revoked, so rotating the
     * variable rotates the credential.
     */
    async ensureBootstrap (token: string): Promise<{ created: boolean, revoked: number }> {
      const name = 'bootstrap admin (VIGIL_ADMIN_TOKEN)'
      const hash = sha256(token)
      const revoked = await pool.query(
        'UPDATE api_tokens SET revoked_at = now() WHERE name = $1 AND token_hash <> $2 AND revoked_at IS NULL', [name, hash])
      const created = await pool.query(
        'INSERT INTO api_tokens (id, name, role, token_hash) VALUES ($1, $2, $3, $4) ON CONFLICT (token_hash) DO NOTHING',
        [randomUUID(), name, 'admin', hash])
      return { created: (created.rowCount ?? 0) > 0, revoked: revoked.rowCount ?? 0 }
    },

    async authenticate (token: string): Promise<TokenPrincipal | null> {
      const { rows } = await pool.query(
        `SELECT t.id, t.name, t.role, t.created_by, t.last_used_at, d.category AS role_category, d.permissions AS role_permissions
           FROM api_tokens t LEFT JOIN role_definitions d ON d.id = t.role
          WHERE t.token_hash = $1 AND t.revoked_at IS NULL`,
        [sha256(token)])
      const row = rows[0]
      if (row === undefined) return null
      // last_used_at is for audits of idle tokens: minute resolution saves a write per request.
      if (row.last_used_at === null || Date.now() - (row.last_used_at as Date).getTime() > 60_000) {
        await pool.query('UPDATE api_tokens SET last_used_at = now() WHERE id = $1', [row.id])
      }
      const roleGrant = row.role_category === null ? null : { category: row.role_category as string, permissions: row.role_permissions as string[] }
      return { tokenId: row.id, name: row.name, role: row.role, createdBy: row.created_by, roleGrant }
    },

    /** A live (unrevoked) token by id: for following a token's chain of creators. */
    async getLive (id: string): Promise<TokenPrincipal | null> {
      if (!UUID.test(id)) return null
      const { rows } = await pool.query('SELECT id, name, role, created_by FROM api_tokens WHERE id = $1 AND revoked_at IS NULL', [id])
      const row = rows[0]
      return row === undefined ? null : { tokenId: row.id, name: row.name, role: row.role, createdBy: row.created_by }
    },

    async count (): Promise<number> {
      const { rows } = await pool.query('SELECT count(*)::int AS n FROM api_tokens WHERE revoked_at IS NULL')
      return rows[0].n as number
    }
  }
}

export type ApiTokenStore = ReturnType<typeof createApiTokenStore>
