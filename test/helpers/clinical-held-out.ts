/**
 * Held-out clinical sentences for the transcription word error rate (issue 13 §5). They are
 * not in the language model's corpus (jobs/transcription/clinical-corpus.txt; a test checks)
 * and nothing was tuned on them: the corpus, the model builder and its settings were written
 * before these were first decoded, and were not changed after.
 */
export const heldOutClinicalSentences = [
  'oxygen at two litres per minute via nasal cannula',
  'heart rate is one hundred and ten and regular',
  'respiratory rate twenty two breaths per minute',
  'saturations ninety four percent on room air',
  'give paracetamol one gram every six hours as needed',
  'blood pressure one hundred and ten over seventy',
  'temperature thirty eight point five degrees',
  'the patient is alert and oriented',
  'continue amoxicillin five hundred milligrams three times a day',
  'start furosemide forty milligrams once daily',
  'blood glucose was seven point two this morning',
  'she complains of shortness of breath on exertion',
  'no chest pain or palpitations overnight',
  'increase the insulin by two units at night',
  'the wound is clean with no signs of infection',
  'he was given morphine five milligrams for pain',
  'recheck the potassium level tomorrow',
  'weight is seventy two kilograms',
  'reduce the oxygen if saturations stay above ninety six',
  'please monitor fluid balance and urine output'
]
