// Times in the operator's time zone: the browser's own, or the one the page's URL names
// (?tz=Europe/Berlin: a dispatcher looking at another district, and the screenshots, which
// must not depend on the machine that made them). Services speak unix seconds (UTC).

function zoneFromUrl() {
  const tz = new URLSearchParams(location.search).get("tz");
  if (!tz) return undefined;
  try {
    new Intl.DateTimeFormat("en-GB", { timeZone: tz });
    return tz;
  } catch {
    return undefined; // an unknown zone: the browser's own, rather than no page at all
  }
}

export const zone = zoneFromUrl() || Intl.DateTimeFormat().resolvedOptions().timeZone;

const full = new Intl.DateTimeFormat("en-GB", {
  timeZone: zone, year: "numeric", month: "2-digit", day: "2-digit",
  hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false, timeZoneName: "short",
});

export function when(unix) {
  if (unix === null || unix === undefined) return "";
  return full.format(new Date(unix * 1000));
}
