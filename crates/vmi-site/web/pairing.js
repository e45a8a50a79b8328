// Pairing a device by code, from the page: a browser with no device pairs itself with a code from another
// device of the user (or the operator), and a paired one shows a code for the next device. Both go through the
// site that served the page (`POST v1/pair`, `POST v1/me/pair-code`).

import { bearer, postJson } from './api.js';
import { rememberToken } from './storage.js';

/** A name for this browser's device, as the user sees it in the list of devices. */
function deviceName() {
  const ua = navigator.userAgent;
  const what = /Android/i.test(ua) ? 'Android' : /iPhone|iPad/i.test(ua) ? 'iOS' : /Mac/i.test(ua) ? 'Mac' : /Windows/i.test(ua) ? 'Windows' : 'Linux';
  return `Browser on ${what}`;
}

/** No device in this browser: the pairing form, which pairs and opens the phone. */
export function showPairForm(ui, vmi) {
  if (!ui.pairPanel) return;
  ui.pairPanel.hidden = false;
  ui.pairName.value = deviceName();
  ui.pairForm.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const code = ui.pairCode.value.trim();
    if (!code) return;
    ui.pairSubmit.disabled = true;
    ui.pairError.textContent = '';
    try {
      const device = await postJson('v1/pair', {}, { code, name: ui.pairName.value.trim() || deviceName() });
      vmi.paired = true;
      rememberToken(device.token);
      location.reload();
    } catch (e) {
      ui.pairError.textContent = /404/.test(e.message) || /pairing code/.test(e.message)
        ? 'That code is not valid: it may be mistyped, used already, or older than 10 minutes.'
        : `Could not pair: ${e.message}`;
      ui.pairSubmit.disabled = false;
    }
  });
}

/** A paired device: "Pair another device" shows a one-time code for 10 minutes. */
export function bindPairCode(ui, token) {
  if (!ui.pairNewBtn) return;
  ui.pairNewBtn.addEventListener('click', async (ev) => {
    ev.preventDefault();
    ui.pairNewBtn.disabled = true;
    try {
      const code = await postJson('v1/me/pair-code', bearer(token), {});
      const until = new Date(code.expires_ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', hourCycle: 'h23' });
      ui.pairNewCode.textContent = `${code.code}  (until ${until}: type it on the new device)`;
    } catch (e) {
      ui.pairNewCode.textContent = `Could not issue a code: ${e.message}`;
    } finally {
      ui.pairNewBtn.disabled = false;
    }
  });
}
