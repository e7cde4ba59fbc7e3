// Command-line options of the device scripts: `opt("--name", default)` is the word after --name.
export const args = process.argv.slice(2);

export function opt(name, dflt) {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : dflt;
}
