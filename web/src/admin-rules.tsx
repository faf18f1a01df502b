import { useEffect, useRef, useState } from 'preact/hooks'
import { ApiError, api } from './api.ts'
import type { Session } from './api.ts'
import { clock } from './format.ts'

// The alert rules editor: the active rules file as text, saved with PUT /v1/alert-rules. A
// rejected document's problems are shown at their line (the API gives line and column), in a
// numbered listing of the document and as a list whose entries move the cursor to the line.
// The version history lists every loaded version, who loaded it and when; each can be viewed
// and copied into the editor.

interface Problem { path: string, message: string, line?: number, column?: number }
interface Version {
  id: string, version: string, loadedAt: string, loadedBy: string, loadedByName: string | null, source: string,
  added: string[], removed: string[], changed: string[]
}
interface RulesState {
  version: string, loadedAt: string, loadedBy: string, document: string | null,
  lastError: { at: string, version: string, problems: Problem[] } | null
  history: { items: Version[], nextCursor: string | null }
}
interface VersionView extends Version { document: string | null, active: boolean }

const who = (v: Pick<Version, 'loadedBy' | 'loadedByName'>): string => v.loadedByName ?? (v.loadedBy.startsWith('token:') ? 'an API token' : v.loadedBy)

export function RulesEditor ({ session }: { session: Session }) {
  const canWrite = session.permissions.includes('rules:write')
  const [state, setState] = useState<RulesState | null>(null)
  const [text, setText] = useState('')
  const [problems, setProblems] = useState<{ code: string, items: Problem[], text: string } | null>(null)
  const [saved, setSaved] = useState<string | null>(null)
  const [error, setError] = useState<string | null>(null)
  const [viewing, setViewing] = useState<VersionView | null>(null)
  const [older, setOlder] = useState<Version[]>([])
  const [cursor, setCursor] = useState<string | null>(null)
  const editor = useRef<HTMLTextAreaElement>(null)

  function show (next: RulesState): void {
    setState(next)
    setText(next.document ?? '')
    setOlder([])
    setCursor(next.history.nextCursor)
  }
  useEffect(() => {
    api<RulesState>('GET', '/v1/alert-rules?limit=20').then(show, () => setError('The alert rules could not be loaded.'))
  }, [])

  async function save (event: Event): Promise<void> {
    event.preventDefault()
    setSaved(null)
    setError(null)
    try {
      show(await api<RulesState>('PUT', '/v1/alert-rules', { document: text }))
      setProblems(null)
      setSaved('Saved: the new rules are running.')
    } catch (err) {
      if (err instanceof ApiError && (err.code === 'VIGIL_ERR_RULES_INVALID' || err.code === 'VIGIL_ERR_RULES_SYNTAX')) {
        setProblems({ code: err.code, items: err.details as Problem[] ?? [], text })
      } else {
        setError(err instanceof ApiError ? `Not saved: ${err.message}` : 'Not saved.')
      }
    }
  }

  /** Puts the cursor at the problem's line and column in the editor. */
  function goTo (p: Problem): void {
    const area = editor.current
    if (area === null || p.line === undefined) return
    const lines = area.value.split('\n')
    let offset = 0
    for (let i = 0; i < p.line - 1 && i < lines.length; i++) offset += lines[i]!.length + 1
    offset += Math.max(0, (p.column ?? 1) - 1)
    area.focus()
    area.setSelectionRange(offset, offset)
    // Scroll the line into view: lines × line height.
    area.scrollTop = Math.max(0, (p.line - 3) * parseFloat(getComputedStyle(area).lineHeight || '20'))
  }

  async function view (v: Version): Promise<void> {
    try {
      setViewing(await api<VersionView>('GET', `/v1/alert-rules/versions/${v.id}`))
    } catch {
      setError('That version could not be loaded.')
    }
  }
  async function more (): Promise<void> {
    if (cursor === null) return
    const next = await api<RulesState>('GET', `/v1/alert-rules?limit=20&cursor=${cursor}`)
    setOlder((o) => [...o, ...next.history.items])
    setCursor(next.history.nextCursor)
  }

  if (state === null) return error === null ? <p aria-busy="true">Loading…</p> : <p class="error" role="alert">{error}</p>
  const versions = [...state.history.items, ...older]
  const byLine = new Map<number, Problem[]>()
  for (const p of problems?.items ?? []) if (p.line !== undefined) byLine.set(p.line, [...(byLine.get(p.line) ?? []), p])

  return (
    <section aria-labelledby="rules-h">
      <h2 id="rules-h">Alert rules</h2>
      <p class="muted">Active version <code>{state.version.slice(0, 12)}</code>, loaded {clock(state.loadedAt)} by {who({ loadedBy: state.loadedBy, loadedByName: state.history.items.find((h) => h.version === state.version)?.loadedByName ?? null })}.
        {' '}An invalid document changes nothing: the running rules stay.</p>
      {state.lastError !== null && problems === null && (
        <p class="notice" role="status">The last edit of the file on disk was rejected ({clock(state.lastError.at)}): {state.lastError.problems.map((p) => p.line === undefined ? p.message : `line ${p.line}: ${p.message}`).join('; ')}</p>
      )}
      {state.document === null
        ? <p>The rules document holds webhook addresses and is shown to administrators only.</p>
        : (
          <form class="rules-editor" onSubmit={(e) => { void save(e) }} aria-label="Edit the alert rules">
            <label for="rules-text">Rules file (YAML)</label>
            <textarea id="rules-text" ref={editor} spellcheck={false} rows={18} value={text} readOnly={!canWrite}
              aria-describedby={problems === null ? undefined : 'rules-problems-h'}
              onInput={(e) => { setText((e.currentTarget as HTMLTextAreaElement).value); setSaved(null) }} />
            {canWrite && (
              <div class="actions">
                <button type="submit">Save rules</button>
                <button type="button" class="quiet" onClick={() => { setText(state.document ?? ''); setProblems(null) }}>Discard changes</button>
              </div>
            )}
            {saved !== null && <p role="status" class="saved">{saved}</p>}
            {error !== null && <p class="error" role="alert">{error}</p>}
          </form>
          )}
      {problems !== null && (
        <section class="rules-problems" aria-labelledby="rules-problems-h">
          <h3 id="rules-problems-h">{problems.code === 'VIGIL_ERR_RULES_SYNTAX' ? 'Not saved: the document is not valid YAML' : 'Not saved: the rules have problems'}</h3>
          <div role="alert">
            <ul>
              {problems.items.map((p, i) => (
                <li key={i}>
                  {p.line === undefined ? <strong>Document: </strong> : <button type="button" class="link" onClick={() => goTo(p)}>Line {p.line}, column {p.column}</button>}
                  {' '}{p.message}
                </li>
              ))}
            </ul>
          </div>
          <h4>Where</h4>
          <ol class="listing" aria-label="The document with its problems at their lines">
            {problems.text.split('\n').map((line, i) => {
              const here = byLine.get(i + 1)
              return (
                <li key={i} value={i + 1} class={here === undefined ? undefined : 'has-problem'} data-line={i + 1}>
                  <code>{line === '' ? ' ' : line}</code>
                  {here?.map((p, k) => <span key={k} class="problem-at"><span class="visually-hidden">Problem on line {i + 1}: </span>{p.message}</span>)}
                </li>
              )
            })}
          </ol>
        </section>
      )}

      <h3 id="versions-h">Version history</h3>
      <table class="devices-table versions" aria-labelledby="versions-h">
        <thead><tr><th scope="col">Loaded</th><th scope="col">By</th><th scope="col">Changes</th><th scope="col">Version</th><th scope="col"><span class="visually-hidden">Actions</span></th></tr></thead>
        <tbody>
          {versions.map((v) => (
            <tr key={v.id} data-version-id={v.id}>
              <td>{clock(v.loadedAt)}</td>
              <td>{who(v)}</td>
              <td>{[v.added.length > 0 && `added ${v.added.join(', ')}`, v.removed.length > 0 && `removed ${v.removed.join(', ')}`, v.changed.length > 0 && `changed ${v.changed.join(', ')}`].filter(Boolean).join('; ') || '—'}</td>
              <td><code>{v.version.slice(0, 12)}</code>{v.version === state.version && ' (active)'}</td>
              <td><button type="button" class="small quiet" onClick={() => { void view(v) }} aria-label={`View the version loaded ${clock(v.loadedAt)}`}>View</button></td>
            </tr>
          ))}
        </tbody>
      </table>
      {cursor !== null && <button type="button" class="quiet" onClick={() => { void more() }}>Older versions</button>}
      {viewing !== null && (
        <section class="version-view" aria-labelledby="version-view-h">
          <h4 id="version-view-h">Version <code>{viewing.version.slice(0, 12)}</code>{viewing.active ? ' (active)' : ''}, loaded {clock(viewing.loadedAt)} by {who(viewing)}</h4>
          {viewing.document === null ? <p>The document is shown to administrators only.</p> : <pre class="record">{viewing.document}</pre>}
          <div class="actions">
            {canWrite && viewing.document !== null && !viewing.active && (
              <button type="button" onClick={() => { setText(viewing.document ?? ''); setProblems(null); setViewing(null); editor.current?.focus() }}>Copy into the editor</button>
            )}
            <button type="button" class="quiet" onClick={() => setViewing(null)}>Close</button>
          </div>
        </section>
      )}
    </section>
  )
}
