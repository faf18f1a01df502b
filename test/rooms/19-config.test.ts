import { runRoom } from '../helpers/rooms.ts'

await runRoom('config')
