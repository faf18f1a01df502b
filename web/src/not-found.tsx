import { useEffect } from 'preact/hooks'
import { linkClick } from './router.ts'

export function NotFound ({ what = 'page' }: { what?: string }) {
  useEffect(() => { document.title = 'Not found · Vigil' }, [])
  return (
    <main id="main" class="page">
      <h1>Not found</h1>
      <p>There is no {what} here, or it is not one you may see.</p>
      <p><a href="/" onClick={linkClick}>Back to the worklist</a></p>
    </main>
  )
}

