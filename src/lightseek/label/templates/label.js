// LabelHub's pages: a few functions, no framework. Every state-changing request sends the
// session's CSRF token (the page's body carries it) as X-CSRF-Token.
const LabelHub = (() => {
  const csrf = () => document.body.dataset.csrf;
  const $ = (sel, root = document) => root.querySelector(sel);
  const h = (tag, attrs = {}, ...kids) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === 'text') e.textContent = v; else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else if (v !== false && v !== null && v !== undefined) e.setAttribute(k, v === true ? '' : v);
    }
    kids.flat().forEach(k => e.append(k));
    return e;
  };
  async function api(method, url, body, isForm) {
    const opts = {method, headers: {'X-CSRF-Token': csrf()}, credentials: 'same-origin'};
    if (body !== undefined) {
      if (isForm) opts.body = body; else { opts.body = JSON.stringify(body); opts.headers['Content-Type'] = 'application/json'; }
    }
    return fetch(url, opts);
  }
  async function errorOf(r) {
    try { const j = await r.json(); return (j.error && j.error.message) || JSON.stringify(j.detail || j); }
    catch (e) { return `HTTP ${r.status}`; }
  }
  // character offsets as Python counts them (code points), from the browser's UTF-16 offsets
  const codePoints = (s, utf16) => Array.from(s.slice(0, utf16)).length;

  function newProjectForm() {
    const f = $('#new-project'); if (!f) return;
    f.addEventListener('submit', async ev => {
      ev.preventDefault();
      const d = new FormData(f);
      const labels = (d.get('labels') || '').split(',').map(s => s.trim()).filter(Boolean);
      const config = {overlap: parseInt(d.get('overlap') || '1', 10), multi: d.get('multi') === 'on'};
      if (labels.length) config.labels = labels;
      const r = await api('POST', '/api/projects', {name: d.get('name'), task: d.get('task'), config});
      if (r.ok) location.reload(); else $('#new-project-error').textContent = await errorOf(r);
    });
  }

  function projectPage(pid) {
    const m = $('#add-member');
    if (m) m.addEventListener('submit', async ev => {
      ev.preventDefault();
      const r = await api('PUT', `/api/projects/${pid}/members/${new FormData(m).get('user_id')}`);
      if (r.ok) location.reload();
    });
    const imp = $('#import');
    if (imp) imp.addEventListener('submit', async ev => {
      ev.preventDefault();
      const r = await api('POST', `/api/projects/${pid}/items`, new FormData(imp), true);
      $('#import-result').textContent = r.ok ? `${(await r.json()).imported} items imported` : await errorOf(r);
    });
  }

  function usersPage() {
    document.querySelectorAll('select.role').forEach(s => s.addEventListener('change', async () => {
      await api('PATCH', `/api/users/${s.dataset.user}`, {role: s.value});
    }));
    const f = $('#new-user');
    f.addEventListener('submit', async ev => {
      ev.preventDefault();
      const d = new FormData(f);
      const r = await api('POST', '/api/users', {username: d.get('username'), password: d.get('password'), role: d.get('role')});
      if (r.ok) location.reload(); else $('#new-user-error').textContent = await errorOf(r);
    });
  }

  function annotate(project, names) {
    const box = $('#item'), status = $('#status');
    let item = null, started = 0, spans = [];
    const best = () => (item.prelabels || []).slice().sort((a, b) => (b.score ?? 0) - (a.score ?? 0))[0];

    function prelabelLine() {
      if (!item.prelabels || !item.prelabels.length) return [];
      return h('p', {class: 'prelabel', id: 'prelabels'}, 'Models suggest: ' + item.prelabels.map(p =>
        `${p.model} ${p.version}: ${JSON.stringify(p.value)}${p.score == null ? '' : ` (${p.score.toFixed(2)})`}`).join(' · '));
    }
    function choices(labels, multi, chosen, title) {
      return h('div', {class: 'labels', id: 'choices'}, labels.map((lab, i) => h('label', {},
        h('input', {type: multi ? 'checkbox' : 'radio', name: 'label', value: lab, id: `label-${i}`, checked: chosen.includes(lab)}),
        ' ' + (title ? `${lab} ${title[lab] || ''}` : lab))));
    }
    function spanList() {
      const text = item.data.text, chars = Array.from(text), list = $('#spans'), prev = $('#preview');
      list.replaceChildren(...spans.map((s, i) => h('li', {}, `${s[2]}: “${chars.slice(s[0], s[1]).join('')}” [${s[0]}, ${s[1]})`, ' ',
        h('button', {class: 'secondary', type: 'button', onclick: () => { spans.splice(i, 1); spanList(); }}, 'remove'))));
      const sorted = spans.slice().sort((a, b) => a[0] - b[0]);
      let at = 0; const parts = [];
      for (const [s, e, lab] of sorted) {
        if (s < at) continue;
        parts.push(chars.slice(at, s).join(''), h('mark', {title: lab}, chars.slice(s, e).join('')));
        at = e;
      }
      parts.push(chars.slice(at).join(''));
      prev.replaceChildren(...parts);
    }
    function render() {
      const d = item.data, mine = item.mine, top = best();
      const parts = [];
      if (project.task === 'qa') {
        parts.push(h('h3', {text: 'Question'}), h('div', {class: 'text', id: 'question', text: d.question}));
        if (d.context) parts.push(h('div', {class: 'text', text: d.context}));
        parts.push(h('p', {class: 'prelabel', text: d.draft ? "The model's draft is below: correct it, or write your own answer." : 'Write the answer.'}),
          h('textarea', {id: 'answer'}, (mine && mine.answer) || d.draft || (top && top.value.answer) || ''));
      } else if (project.task === 'rank') {
        parts.push(h('div', {class: 'text', id: 'prompt', text: d.prompt}), h('p', {text: 'Rank the responses: 1 is best.'}));
        d.responses.forEach((r, i) => parts.push(h('div', {class: 'card'}, h('div', {class: 'text', text: r}),
          h('label', {}, 'rank ', h('select', {id: `rank-${i}`}, d.responses.map((_, j) => h('option', {value: j, selected: (mine ? mine.ranking.indexOf(i) : i) === j}, String(j + 1))))))));
      } else {
        parts.push(h('div', {id: 'text', text: d.text}));
      }
      parts.push(prelabelLine());
      if (project.task === 'classify') {
        parts.push(choices(project.config.labels, project.config.multi, mine ? mine.labels : top ? top.value.labels : []));
      } else if (project.task === 'safety') {
        parts.push(h('p', {text: 'Tick every category the text violates; none for a harmless text.'}),
          choices(project.config.labels, true, mine ? mine.categories : top ? top.value.categories : [], names));
      } else if (project.task === 'spans') {
        spans = mine ? mine.spans.map(s => s.slice()) : top ? top.value.spans.map(s => s.slice()) : [];
        parts.push(h('p', {}, 'Select text above, choose a label, then ',
          h('select', {id: 'span-label'}, project.config.labels.map(l => h('option', {}, l))), ' ',
          h('button', {type: 'button', id: 'tag', onclick: tagSelection}, 'Tag selection')),
          h('ul', {id: 'spans'}), h('div', {class: 'text', id: 'preview'}));
      }
      parts.push(h('p', {}, h('button', {id: 'submit', onclick: submit}, 'Submit'), ' ',
        h('button', {class: 'secondary', id: 'skip', onclick: skip}, 'Skip')));
      box.replaceChildren(...parts.flat());
      if (project.task === 'spans') spanList();
      started = Date.now();
    }
    function tagSelection() {
      const sel = window.getSelection(), node = $('#text').firstChild;
      if (!sel.rangeCount || !node) return;
      const r = sel.getRangeAt(0);
      if (r.startContainer !== node || r.endContainer !== node || r.collapsed) { status.textContent = 'Select part of the text first.'; return; }
      const text = item.data.text;
      spans.push([codePoints(text, r.startOffset), codePoints(text, r.endOffset), $('#span-label').value]);
      status.textContent = ''; sel.removeAllRanges(); spanList();
    }
    function value() {
      const checked = () => Array.from(document.querySelectorAll('#choices input:checked')).map(e => e.value);
      switch (project.task) {
        case 'classify': return {labels: checked()};
        case 'safety': return {categories: checked()};
        case 'qa': return {answer: $('#answer').value};
        case 'spans': return {spans};
        case 'rank': {
          const order = item.data.responses.map((_, i) => [parseInt($(`#rank-${i}`).value, 10), i]).sort((a, b) => a[0] - b[0]);
          return {ranking: order.map(x => x[1])};
        }
      }
    }
    async function submit() {
      const top = best();
      const body = {value: value(), seconds: (Date.now() - started) / 1000};
      if (top) body.prelabel_id = top.id;
      const r = await api('POST', `/api/items/${item.id}/annotations`, body);
      if (r.ok) { status.textContent = ''; load(); } else status.textContent = await errorOf(r);
    }
    async function skip() {
      const r = await api('POST', `/api/items/${item.id}/skip`);
      if (r.ok) load(); else status.textContent = await errorOf(r);
    }
    async function load() {
      const r = await api('POST', `/api/projects/${project.id}/next`);
      if (r.status === 204) { box.replaceChildren(h('p', {class: 'empty', id: 'done', text: 'Nothing left for you in this project. Thank you!'})); return; }
      if (!r.ok) { status.textContent = await errorOf(r); return; }
      item = await r.json(); render();
    }
    load();
  }

  function reviewPage() {
    document.querySelectorAll('.review-item').forEach(card => {
      const id = card.dataset.item, out = $('.result', card);
      const send = async body => {
        const r = await api('POST', `/api/items/${id}/review`, body);
        if (r.ok) { card.classList.add('done'); out.className = 'result'; out.textContent = `${body.decision.replace(/e$/, '')}ed`; }
        else out.textContent = await errorOf(r);
      };
      $('.accept', card).addEventListener('click', () => send({decision: 'accept'}));
      $('.reject', card).addEventListener('click', () => send({decision: 'reject'}));
      $('.adjudicate', card).addEventListener('click', () => {
        let v; try { v = JSON.parse($('.adjudicate-value', card).value); } catch (e) { out.textContent = 'not JSON'; return; }
        send({decision: 'adjudicate', value: v});
      });
    });
  }
  return {api, newProjectForm, projectPage, usersPage, annotate, reviewPage};
})();
