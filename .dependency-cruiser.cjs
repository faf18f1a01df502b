// Imports run one way (STYLE.md 11, issue 14): a room (folder) may import only rooms on lower
// floors, never one on its own floor or above, so no cycle between folders can form. The floors
// are declared once in scripts/layout-floors.json ({"room": floor}; "test/**" covers test/ and
// the folders below it unless they have their own line); scripts/import-picture.ts reads the
// same file for the picture. A new folder needs a line there before its files may import.
//
//   npx depcruise --config .dependency-cruiser.cjs .
const floors = require('./scripts/layout-floors.json')

const escape = (s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
const rooms = Object.keys(floors)
const isGlob = (room) => room.endsWith('/**')
const base = (room) => (isGlob(room) ? room.slice(0, -3) : room)

/** The files a room holds: those directly in its folder; a "/**" room, those below it not claimed by a more specific room. */
function roomPath (room) {
  if (room === '(root)') return '^[^/]+$'
  if (!isGlob(room)) return `^${escape(room)}/[^/]+$`
  const inside = rooms.filter((r) => r !== room && (base(r) === base(room) || base(r).startsWith(`${base(room)}/`)))
  const claimed = inside.map((r) => (isGlob(r) ? `(?!${escape(base(r).slice(base(room).length + 1))}/)` : `(?!${escape(base(r).slice(base(room).length + 1))}/[^/]+$)`))
  return `^${escape(base(room))}/${claimed.join('')}`
}

const upward = rooms.map((room) => ({
  name: `floor-${floors[room]}:${room}`,
  comment: `${room} is on floor ${floors[room]}: it may import only rooms on lower floors (scripts/layout-floors.json)`,
  severity: 'error',
  from: { path: roomPath(room) },
  to: {
    path: rooms.filter((r) => r !== room && floors[r] >= floors[room]).map(roomPath)
  }
})).filter((rule) => rule.to.path.length > 0)

module.exports = {
  forbidden: [
    ...upward,
    {
      name: 'room-without-floor',
      comment: 'every folder with TypeScript in it is a room with a floor in scripts/layout-floors.json',
      severity: 'error',
      from: { path: '\\.ts$', pathNot: rooms.map(roomPath) },
      to: {}
    },
    {
      name: 'no-folder-cycles',
      comment: 'folders import each other in one direction only',
      severity: 'error',
      scope: 'folder',
      from: {},
      to: { circular: true }
    },
    {
      name: 'not-to-unresolvable',
      comment: 'an import names a file that does not exist (a move missed it)',
      severity: 'error',
      from: {},
      to: { couldNotResolve: true }
    }
  ],
  options: {
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
    doNotFollow: { path: 'node_modules' },
    exclude: { path: '^(node_modules|dist|data|\\.tap|scratch|coverage|bench/results)/' },
    includeOnly: { path: '\\.ts$' }
  }
}
