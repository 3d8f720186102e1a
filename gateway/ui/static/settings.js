// The settings form, built from the parameter models' JSON schemas (GET /ui/schema.json): one field per
// property, its input from the property's type, bounds, choices, default and description. A parameter
// added to the model shows up here by itself; LOOKS only says how a few known ones read best.

const LANGUAGES = { en: 'English', de: 'German', fr: 'French', es: 'Spanish', it: 'Italian', pt: 'Portuguese',
  nl: 'Dutch', pl: 'Polish', sv: 'Swedish', da: 'Danish', no: 'Norwegian', fi: 'Finnish', cs: 'Czech',
  ru: 'Russian', uk: 'Ukrainian', tr: 'Turkish', el: 'Greek', ar: 'Arabic', he: 'Hebrew', hi: 'Hindi',
  zh: 'Chinese', ja: 'Japanese', ko: 'Korean', vi: 'Vietnamese', id: 'Indonesian' };
// Labels and helpers where the schema's title reads awkwardly; the schema still decides type, bounds and default.
const LOOKS = {
  num_images: { label: 'Images' },
  guidance_scale: { label: 'Guidance' },
  seed: { placeholder: 'random', dice: true },
  negative_prompt: { placeholder: 'what to avoid' },
  best_of: { label: 'Best of', placeholder: 'off' },
  language: { label: 'Spoken language', choices: [['', 'Detect it'], ...Object.entries(LANGUAGES)] },
};

const fields = new Map();  // parameter -> {input, property}

/** A property with an Optional's anyOf folded in: ``{type, minimum, ..., nullable}``. */
export function described(property) {
  const options = property.anyOf || [];
  const inner = options.find((option) => option.type !== 'null') || {};
  return { ...inner, ...property, nullable: options.some((option) => option.type === 'null') };
}

function label(key, property) {
  if (LOOKS[key]?.label) return LOOKS[key].label;
  const title = property.title || key.replace(/_/g, ' ');
  return title.charAt(0) + title.slice(1).toLowerCase();
}

function select(property, look) {
  const input = document.createElement('select');
  const choices = look.choices || property.enum.map((value) => [value, value]);
  input.replaceChildren(...choices.map(([value, text]) => new Option(text, value)));
  return input;
}

function numberInput(property) {
  const input = document.createElement('input');
  input.type = 'number';
  input.step = property.multipleOf ?? (property.type === 'integer' ? 1 : 'any');
  return input;
}

function inputFor(property, look) {
  if (look.choices || property.enum) return select(property, look);
  if (property.type === 'integer' || property.type === 'number') return numberInput(property);
  const input = document.createElement('input');
  input.type = property.type === 'boolean' ? 'checkbox' : 'text';
  return input;
}

/** The input beside a random-seed button: a value within the input's bounds. */
function withDice(input) {
  const dice = document.createElement('button');
  Object.assign(dice, { type: 'button', id: 'dice', title: 'A random seed', textContent: '\u2684' });
  dice.setAttribute('aria-label', 'Pick a random seed');
  dice.addEventListener('click', () => {
    const low = Number(input.min || 0);
    const high = Number(input.max || 2 ** 31 - 1);
    input.value = low + Math.floor(Math.random() * (high - low + 1));
    input.dataset.touched = '1';
  });
  const group = document.createElement('span');
  group.className = 'with-button';
  group.append(input, dice);
  return group;
}

function field(key, schemaProperty) {
  const property = described(schemaProperty);
  const look = LOOKS[key] || {};
  const input = inputFor(property, look);
  input.id = key;
  input.name = key;
  if (look.placeholder) input.placeholder = look.placeholder;
  if (property.description) input.title = property.description;
  input.addEventListener('input', () => { input.dataset.touched = '1'; });
  fields.set(key, { input, property });
  applyBounds(key, schemaProperty);
  const box = document.createElement('div');
  box.className = `field${input.type === 'text' ? ' wide' : ''}${look.dice ? ' seed' : ''}`;
  const caption = document.createElement('label');
  caption.htmlFor = key;
  caption.textContent = label(key, property);
  box.append(caption, look.dice ? withDice(input) : input);
  return box;
}

/** Builds the form in ``container`` from ``properties`` ([key, JSON schema property] pairs): one-column fields
 * first, in the schema's order, then the seed's two columns, then full-width text fields. */
export function buildSettings(container, properties) {
  const boxes = properties.filter(([, property]) => described(property).type !== 'array').map(([key, property]) => field(key, property));
  const width = (box) => (box.classList.contains('wide') ? 2 : Number(box.classList.contains('seed')));
  container.replaceChildren(...boxes.sort((a, b) => width(a) - width(b)));
}

/** A field's bounds, choices and default from ``schemaProperty`` (the model's, or an executor's as configured);
 * a value the person typed stays. */
export function applyBounds(key, schemaProperty) {
  const known = fields.get(key);
  if (!known) return;
  const { input } = known;
  const property = described(schemaProperty);
  if (input.tagName === 'SELECT') {
    if (property.enum && !LOOKS[key]?.choices) fillSelect(input, property.enum);
  } else {
    if (property.minimum !== undefined) input.min = property.minimum;
    if (property.maximum !== undefined) input.max = property.maximum;
    if (property.multipleOf !== undefined) input.step = property.multipleOf;
    if (property.maxLength !== undefined) input.maxLength = property.maxLength;
  }
  if (property.default === undefined || property.default === null || input.dataset.touched) return;
  if (input.type === 'checkbox') input.checked = Boolean(property.default);
  else input.value = property.default;
}

function fillSelect(input, values) {
  const current = input.value;
  input.replaceChildren(...values.map((value) => new Option(value, value)));
  if (values.includes(current)) input.value = current;
}

/** The settings as given: ``{parameter: text}``, empty fields left out (the service's default). */
export function settingValues() {
  const values = {};
  for (const [key, { input }] of fields) {
    const value = input.type === 'checkbox' ? String(input.checked) : input.value.trim();
    if (value !== '') values[key] = value;
  }
  return values;
}

/** ``values``' settings as their schema types (numbers, booleans), for a JSON body. */
export function typed(values) {
  return Object.fromEntries(Object.entries(values).map(([key, value]) => {
    const type = fields.get(key)?.property.type;
    if (type === 'integer' || type === 'number') return [key, Number(value)];
    if (type === 'boolean') return [key, value === 'true'];
    return [key, value];
  }));
}

/** The settings' parameters, in the form's order. */
export const settingKeys = () => [...fields.keys()];

/** The id of the input that sets ``parameter``, or undefined. */
export const settingInput = (parameter) => (fields.has(parameter) ? parameter : undefined);
