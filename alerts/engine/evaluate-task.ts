// Piscina task: rule evaluation off the event loop (alerts/engine/alert-engine.ts sends batches).
// One per thread: it keeps the states of the patients it evaluated (createEvaluateTask).
import { createEvaluateTask } from './evaluate.ts'
export default createEvaluateTask()
