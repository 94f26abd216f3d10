// Postdesk message view: keyboard shortcuts, rich-text mode, mail frames sized to content.
// Shortcuts (not while typing): r = reply, e = resolve; Ctrl/Cmd+Enter = send.
(function () {
  "use strict";
  const form = document.getElementById("reply-form");
  const body = document.getElementById("reply-body");
  const rich = document.getElementById("rich-editor");
  const toolbar = form && form.querySelector(".toolbar");

  function typing(target) {
    return target && (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName));
  }

  function richMode(on) {
    if (!form) return;
    if (on) { rich.innerHTML = body.value; } else if (!rich.hidden) { body.value = rich.innerHTML; }
    rich.hidden = !on; body.hidden = on; toolbar.hidden = !on;
  }

  if (form) {
    const checked = form.querySelector('input[name="mode"]:checked');
    richMode(checked && checked.value === "html");
    form.querySelectorAll('input[name="mode"]').forEach((radio) =>
      radio.addEventListener("change", () => richMode(radio.value === "html" && radio.checked)));
    form.addEventListener("submit", () => { if (!rich.hidden) body.value = rich.innerHTML; });
    rich.addEventListener("input", () => {  // the draft autosave watches the textarea
      body.value = rich.innerHTML;
      body.dispatchEvent(new KeyboardEvent("keyup"));
    });
    toolbar.querySelectorAll("button.tool").forEach((button) => button.addEventListener("click", () => {
      const cmd = button.dataset.cmd;
      const arg = cmd === "createLink" ? window.prompt("Link address (https://...)") : null;
      if (cmd !== "createLink" || (arg && /^(https?:|mailto:)/i.test(arg))) {
        document.execCommand(cmd, false, arg);
      }
      rich.focus();
    }));
  }

  document.addEventListener("keydown", (event) => {
    if ((event.ctrlKey || event.metaKey) && event.key === "Enter" && form) {
      event.preventDefault();
      form.requestSubmit(form.querySelector('button[data-key="send"]'));
      return;
    }
    if (typing(event.target) || event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.key === "r" && form) {
      event.preventDefault();
      (rich.hidden ? body : rich).focus();
    } else if (event.key === "e") {
      const resolve = document.getElementById("resolve-form");
      if (resolve && window.confirm("Resolve this message without replying?")) resolve.requestSubmit();
    }
  });

  function fit(frame) {
    try {
      const doc = frame.contentDocument;
      if (!doc || doc.readyState !== "complete" || !doc.body) return;
      frame.style.height = Math.min(Math.max(doc.body.scrollHeight + 24, 80), 2000) + "px";
    } catch (e) { /* a frame we cannot read keeps its CSS height */ }
  }
  document.querySelectorAll("iframe.mailbody").forEach((frame) => {
    frame.addEventListener("load", () => fit(frame));
    fit(frame);  // it may have loaded before this script ran
  });
})();
