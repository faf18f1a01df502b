import { render } from 'preact'
import { useEffect, useState } from 'preact/hooks'
import './styles.css'
import { ApiError, api, currentSession, refreshSession, signIn, signOutOnServer, whenSignedOut } from './api.ts'
import type { Session } from './api.ts'
import { currentPath, linkClick, navigate, onNavigate } from './router.ts'
import { isMuted, setMuted } from './sound.ts'
import { setMetricLabels } from './format.ts'
import { Worklist } from './worklist.tsx'
import { PatientPage } from './patient.tsx'
import { AlertsPage } from './alerts.tsx'
import { AdminPage } from './admin.tsx'
import { NotFound } from './not-found.tsx'
import { MePage } from './me.tsx'

// Activity that keeps a session alive on screen; live updates do not count.
const ACTIVITY_EVENTS = ['pointerdown', 'keydown', 'wheel', 'touchstart'] as const

function SignIn ({ onSession, notice }: { onSession: (s: Session) => void, notice: string | null }) {
  const [error, setError] = useState<string | null>(null)
  const [busy, setBusy] = useState(false)
  async function submit (event: Event): Promise<void> {
    event.preventDefault()
    const form = event.currentTarget as HTMLFormElement
    const data = new FormData(form)
    setBusy(true)
    setError(null)
    try {
      const session = await signIn(String(data.get('email')), String(data.get('password')))
      form.reset()
      onSession(session)
    } catch (err) {
      setError(err instanceof ApiError && err.code === 'VIGIL_ERR_RATE_LIMITED'
        ? 'Too many attempts. Wait a minute and try again.'
        : 'The email or password is wrong, or the account is locked.')
    } finally {
      setBusy(false)
    }
  }
  return (
    <main class="signin" id="main">
      <h1>Vigil</h1>
      <p class="subtitle">Remote patient monitoring</p>
      {notice !== null && <p class="notice" role="status">{notice}</p>}
      <form onSubmit={submit} aria-label="Sign in">
        <label>Email<input name="email" type="email" autocomplete="username" required /></label>
        <label>Password<input name="password" type="password" autocomplete="current-password" required /></label>
        {error !== null && <p class="error" role="alert">{error}</p>}
        <button type="submit" disabled={busy}>{busy ? 'Signing in…' : 'Sign in'}</button>
      </form>
    </main>
  )
}

function Nav ({ session, path, onSignOut }: { session: Session, path: string, onSignOut: () => void }) {
  const [muted, setMutedState] = useState(isMuted())
  const can = (p: string): boolean => session.permissions.includes(p)
  const self = session.patientScopes.includes('self')
  const links: Array<[string, string]> = self && session.patientScopes.length === 1
    ? [['/me', 'My data'], ['/alerts', 'My alerts']]
    : [['/', 'Worklist'], ['/alerts', 'Alerts']]
  if (can('users:admin') || can('devices:write') && !session.patientScopes.includes('care-team')) links.push(['/admin', 'Admin'])
  const current = (href: string): boolean => href === '/' ? path === '/' || path.startsWith('/patients/') : path.startsWith(href)
  return (
    <header class="top">
      <a class="skip" href="#main">Skip to content</a>
      <span class="brand" aria-hidden="true">Vigil</span>
      <nav aria-label="Main">
        {links.map(([href, label]) => (
          <a key={href} href={href} onClick={linkClick} aria-current={current(href) ? 'page' : undefined}>{label}</a>
        ))}
      </nav>
      <span class="spacer" />
      <button type="button" class="quiet" aria-pressed={muted} onClick={() => { setMuted(!muted); setMutedState(!muted) }}>
        Mute alert sound
      </button>
      <button type="button" class="quiet" onClick={onSignOut}>Sign out</button>
    </header>
  )
}

function App () {
  const [session, setSession] = useState<Session | null | undefined>(undefined)
  const [path, setPath] = useState(currentPath())
  const [notice, setNotice] = useState<string | null>(null)

  useEffect(() => onNavigate(() => setPath(currentPath())), [])
  useEffect(() => {
    currentSession().then((s) => setSession(s), () => setSession(null))
  }, [])

  function signOut (reason: string): void {
    void signOutOnServer()
    setSession(null)
    setNotice(reason === 'idle' ? 'You were signed out after a period without activity.' : reason === 'expired' ? 'Your session ended. Sign in again.' : null)
    navigate('/', true)
  }
  useEffect(() => { whenSignedOut(signOut) }, [])

  // Idle timeout on screen (the server ends the session after the same time unused) and the
  // access cookie's refresh while the user is active.
  useEffect(() => {
    if (session === null || session === undefined) return
    let lastActivity = Date.now()
    let lastRefresh = Date.now()
    const touch = (): void => { lastActivity = Date.now() }
    for (const e of ACTIVITY_EVENTS) addEventListener(e, touch, { passive: true })
    const timer = setInterval(() => {
      const now = Date.now()
      if (now - lastActivity >= session.idleSeconds * 1000) {
        signOut('idle')
        return
      }
      if (now - lastRefresh >= Math.max(30, session.expiresIn - 60) * 1000) {
        lastRefresh = now
        refreshSession().then((s) => { if (s === null) signOut('expired') }, () => {})
      }
    }, 1000)
    return () => {
      clearInterval(timer)
      for (const e of ACTIVITY_EVENTS) removeEventListener(e, touch)
    }
  }, [session])

  // The metric labels (one catalogue, served by the API) before any screen that shows readings.
  const [labelsFor, setLabelsFor] = useState<string | null>(null)
  useEffect(() => {
    if (session === null || session === undefined) return
    if (!session.permissions.includes('readings:read')) { setLabelsFor(session.userId); return }
    api<{ items: Parameters<typeof setMetricLabels>[0] }>('GET', '/v1/vitals')
      .then((body) => setMetricLabels(body.items), () => {})
      .finally(() => setLabelsFor(session.userId))
  }, [session])

  if (session === undefined || (session !== null && labelsFor !== session.userId)) return <main id="main" class="loading" aria-busy="true">Loading…</main>
  if (session === null) return <SignIn notice={notice} onSession={(s) => { setNotice(null); setSession(s) }} />

  let page
  const patient = /^\/patients\/([0-9a-f-]{36})$/i.exec(path)
  if (patient !== null) page = <PatientPage key={patient[1]} patientId={patient[1]!} session={session} />
  else if (path === '/alerts') page = <AlertsPage session={session} />
  else if (path.startsWith('/admin')) page = <AdminPage key={path} session={session} path={path} />
  else if (path === '/me') page = <MePage session={session} />
  else if (path === '/') page = session.patientScopes.length === 1 && session.patientScopes[0] === 'self' ? <MePage session={session} /> : <Worklist session={session} />
  else page = <NotFound />
  return (
    <>
      <Nav session={session} path={path} onSignOut={() => signOut('user')} />
      {page}
    </>
  )
}

// A page restored from the back/forward cache after sign-out must not show what it held.
addEventListener('pageshow', (event) => { if (event.persisted) location.reload() })

render(<App />, document.getElementById('app')!)
