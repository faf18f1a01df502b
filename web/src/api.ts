// Every request the page makes. The session cookie rides along by itself (same origin); the
// CSRF token lives only in this module's memory, never in storage.

export interface Session {
  userId: string
  roles: string[]
  permissions: string[]
  patientScopes: string[]
  csrfToken: string
  expiresIn: number
  idleSeconds: number
}

export class ApiError extends Error {
  constructor (readonly status: number, readonly code: string, message: string, readonly details?: unknown) {
    super(message)
  }
}

let csrfToken: string | null = null
let onSignedOut: (reason: string) => void = () => {}

export function setCsrfToken (token: string | null): void {
  csrfToken = token
}

/** Called when the server says the session is over (401 after a failed refresh). */
export function whenSignedOut (handler: (reason: string) => void): void {
  onSignedOut = handler
}

async function raw (method: string, path: string, body?: unknown): Promise<Response> {
  const headers: Record<string, string> = { accept: 'application/json' }
  if (body !== undefined) headers['content-type'] = 'application/json'
  if (method !== 'GET' && csrfToken !== null) headers['x-csrf-token'] = csrfToken
  return await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: 'same-origin',
    cache: 'no-store',
    redirect: 'error'
  })
}

async function parse<T> (res: Response): Promise<T> {
  const text = await res.text()
  const json = text === '' ? undefined : JSON.parse(text)
  if (!res.ok) throw new ApiError(res.status, json?.code ?? 'VIGIL_ERR_INTERNAL', json?.message ?? res.statusText, json?.details)
  return json as T
}

let refreshing: Promise<Session | null> | null = null

/** New cookies from the refresh cookie; null when the session is over. One at a time. */
export async function refreshSession (): Promise<Session | null> {
  refreshing ??= (async () => {
    try {
      const res = await raw('POST', '/v1/auth/browser/refresh')
      if (!res.ok) return null
      const session = await parse<Session>(res)
      csrfToken = session.csrfToken
      return session
    } finally {
      refreshing = null
    }
  })()
  return await refreshing
}

/** A /v1 call; on 401 one refresh and one retry, then the page signs out. */
export async function api<T> (method: string, path: string, body?: unknown): Promise<T> {
  let res = await raw(method, path, body)
  if (res.status === 401) {
    const session = await refreshSession()
    if (session === null) {
      onSignedOut('expired')
      throw new ApiError(401, 'VIGIL_ERR_UNAUTHENTICATED', 'signed out')
    }
    res = await raw(method, path, body)
  }
  return await parse<T>(res)
}

export async function signIn (email: string, password: string): Promise<Session> {
  const session = await parse<Session>(await raw('POST', '/v1/auth/browser/login', { email, password }))
  csrfToken = session.csrfToken
  return session
}

/** The session behind the cookie (a reload), refreshed if its access cookie expired; null: sign in. */
export async function currentSession (): Promise<Session | null> {
  const res = await raw('GET', '/v1/auth/browser/session')
  if (res.ok) {
    const session = await parse<Session>(res)
    csrfToken = session.csrfToken
    return session
  }
  return await refreshSession()
}

export async function signOutOnServer (): Promise<void> {
  csrfToken = null
  await raw('POST', '/v1/auth/browser/logout').catch(() => {})
}
