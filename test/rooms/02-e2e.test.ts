import { runRoom } from '../helpers/rooms.ts'

await runRoom('e2e')
