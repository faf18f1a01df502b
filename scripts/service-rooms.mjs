// The service's top-level folders: the rooms of the layout (scripts/layout-floors.json) on floors
// up to the API's. scripts/build.mjs compiles exactly these (and the top-level sources); its test
// checks dist/ holds nothing else. Plain JavaScript: the build runs before anything is compiled.
import fs from 'node:fs/promises'
import path from 'node:path'

/** @param {string} root the checkout @returns {Promise<string[]>} sorted folder names */
export async function serviceRooms (root) {
  const floors = JSON.parse(await fs.readFile(path.join(root, 'scripts/layout-floors.json'), 'utf8'))
  return [...new Set(Object.entries(floors)
    .filter(([name, floor]) => name !== '(root)' && typeof floor === 'number' && floor <= floors.api)
    .map(([name]) => name.split('/')[0]))].sort()
}
