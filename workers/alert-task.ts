// Piscina task: rule evaluation off the event loop (alerts/alert-engine.ts sends batches).
import { evaluate } from '../alerts/evaluate.ts'
export default evaluate
