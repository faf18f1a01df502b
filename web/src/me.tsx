import { useEffect, useState } from 'preact/hooks'
import { api } from './api.ts'
import type { Session } from './api.ts'
import { clock } from './format.ts'
import { linkClick } from './router.ts'

interface AccessLogEntry { at: string, actorName: string | null, actorKind: string, roleNames: string[], action: string, fields: string[], breakGlass: boolean }

/** A patient's own screen: her readings and alerts (her patient page) and who viewed her data. */
export function MePage ({ session }: { session: Session }) {
  const [log, setLog] = useState<AccessLogEntry[] | null>(null)
  useEffect(() => {
    document.title = 'My data · Vigil'
    api<{ items: AccessLogEntry[] }>('GET', '/v1/me/access-log?limit=100').then((r) => setLog(r.items), () => setLog([]))
  }, [])
  return (
    <main id="main" class="page">
      <h1>My data</h1>
      <p><a href={`/patients/${session.userId}`} onClick={linkClick}>My readings and alerts</a></p>
      <h2>Who viewed my data</h2>
      {log === null ? <p aria-busy="true">Loading…</p> : log.length === 0 ? <p>No one has opened your data yet.</p> : (
        <table class="devices-table">
          <caption class="visually-hidden">Who viewed my data, newest first</caption>
          <thead><tr><th scope="col">When</th><th scope="col">Who</th><th scope="col">What</th></tr></thead>
          <tbody>
            {log.map((e, i) => (
              <tr key={i}>
                <td>{clock(e.at)}</td>
                <td>{e.actorName ?? (e.actorKind === 'system' ? 'Vigil' : 'A service')}{e.roleNames.length > 0 ? ` (${e.roleNames.join(', ')})` : ''}{e.breakGlass ? ' · emergency access' : ''}</td>
                <td>{e.action}{e.fields.length > 0 ? `: ${e.fields.join(', ')}` : ''}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </main>
  )
}
