// Paths, not hashes: /, /patients/<id>, /alerts, /me, /admin. Ids are random UUIDs; names
// never appear in a URL.

type Listener = () => void
const listeners = new Set<Listener>()

export function currentPath (): string {
  return location.pathname
}

export function navigate (path: string, replace = false): void {
  if (replace) history.replaceState(null, '', path)
  else if (path !== location.pathname) history.pushState(null, '', path)
  for (const l of listeners) l()
}

export function onNavigate (listener: Listener): () => void {
  listeners.add(listener)
  return () => listeners.delete(listener)
}

addEventListener('popstate', () => { for (const l of listeners) l() })

/** For <a href> inside the app: same-tab clicks navigate without a reload. */
export function linkClick (event: MouseEvent): void {
  const a = (event.currentTarget as HTMLAnchorElement)
  if (event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return
  event.preventDefault()
  navigate(a.pathname)
}
